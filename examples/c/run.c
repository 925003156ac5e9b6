/*
 * run.c: runs one command in a fresh microVM with libnook and prints its
 * output, as `nook run` does.
 *
 *   run [--engine auto|qemu|kvm] [--image REF] [--memory MIB] [-- CMD ARGS...]
 *
 * Without a command it runs `uname -r` (the guest kernel's release). It
 * exits with the command's exit code. Build: see Makefile or
 * docs/c-api.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nook.h"

static void usage(void) {
    fprintf(stderr, "usage: run [--engine E] [--image REF] [--memory MIB] [-- CMD ARGS...]\n");
    exit(2);
}

int main(int argc, char **argv) {
    nook_vm_options vm;
    nook_vm_options_init(&vm);
    const char *default_cmd[] = {"uname", "-r", NULL};
    const char *const *cmd = default_cmd;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            if (i + 1 < argc) {
                /* argv is NULL-terminated, as nook wants it. */
                cmd = (const char *const *)&argv[i + 1];
            }
            break;
        } else if (strcmp(argv[i], "--engine") == 0 && i + 1 < argc) {
            vm.engine = argv[++i];
        } else if (strcmp(argv[i], "--image") == 0 && i + 1 < argc) {
            vm.image = argv[++i];
        } else if (strcmp(argv[i], "--memory") == 0 && i + 1 < argc) {
            vm.memory_mib = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else {
            usage();
        }
    }

    nook_output out;
    nook_status st = nook_run(&vm, cmd, NULL, &out);
    if (st != NOOK_OK && st != NOOK_ERR_TIMEOUT) {
        fprintf(stderr, "run: %s: %s\n", nook_status_name(st), nook_last_error());
        nook_free_output(&out);
        return 125;
    }
    fwrite(out.stdout_data, 1, out.stdout_len, stdout);
    fwrite(out.stderr_data, 1, out.stderr_len, stderr);
    if (st == NOOK_ERR_TIMEOUT) {
        fprintf(stderr, "run: %s\n", nook_last_error());
    }
    int code = out.exit.exit_code;
    nook_free_output(&out);
    return code;
}
