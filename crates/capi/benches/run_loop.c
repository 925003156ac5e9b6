/*
 * run_loop.c: times nook_run in-process for benches/overhead.rs.
 *
 *   run_loop RUNS ENGINE
 *
 * Runs `true` RUNS times with nook_run on ENGINE and prints each call's
 * wall time in microseconds, one per line. Exits non-zero when a call fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "nook.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: run_loop RUNS ENGINE\n");
        return 2;
    }
    int runs = atoi(argv[1]);
    nook_vm_options vm;
    nook_vm_options_init(&vm);
    vm.engine = argv[2];
    const char *cmd[] = {"true", NULL};
    for (int i = 0; i < runs; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        nook_output out;
        nook_status st = nook_run(&vm, cmd, NULL, &out);
        clock_gettime(CLOCK_MONOTONIC, &b);
        int code = out.exit.exit_code;
        nook_free_output(&out);
        if (st != NOOK_OK || code != 0) {
            fprintf(stderr, "run_loop: %s (exit %d): %s\n", nook_status_name(st), code,
                    nook_last_error());
            return 1;
        }
        long long us = (long long)(b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
        printf("%lld\n", us);
    }
    return 0;
}
