/*
 * threads.c: one nook_session handle used by several threads at once, and
 * each thread's own last error (tests/c_examples.rs runs it).
 *
 *   threads [--engine E] NAME
 *
 * Starts session NAME; THREADS threads each run EXECS commands on the one
 * handle and check their output, then fail a call of their own and check
 * that nook_last_error() is their message (after the others failed
 * theirs). Prints one line per thread; removes the session.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "nook.h"

#define THREADS 4
#define EXECS 5

struct job {
    nook_session *session;
    int id;
    int execs_ok;
    int own_error;
    pthread_barrier_t *barrier;
};

static void *work(void *arg) {
    struct job *j = arg;
    char script[64], want[64], missing[64];
    snprintf(script, sizeof script, "echo thread %d", j->id);
    snprintf(want, sizeof want, "thread %d\n", j->id);
    snprintf(missing, sizeof missing, "capi-missing-%d", j->id);
    const char *cmd[] = {"sh", "-c", script, NULL};
    for (int i = 0; i < EXECS; i++) {
        nook_output out;
        nook_status st = nook_session_exec(j->session, cmd, NULL, &out);
        if (st == NOOK_OK && out.stdout_data != NULL &&
            strcmp((const char *)out.stdout_data, want) == 0) {
            j->execs_ok++;
        } else {
            fprintf(stderr, "thread %d: %s: %s\n", j->id, nook_status_name(st), nook_last_error());
        }
        nook_free_output(&out);
    }
    nook_session *none = NULL;
    nook_status st = nook_session_open(missing, &none);
    /* Every thread has failed its own call before any reads its error. */
    pthread_barrier_wait(j->barrier);
    j->own_error = st == NOOK_ERR_NOT_FOUND && none == NULL &&
                   strstr(nook_last_error(), missing) != NULL;
    return NULL;
}

int main(int argc, char **argv) {
    nook_vm_options vm;
    nook_vm_options_init(&vm);
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--engine") == 0 && i + 1 < argc) {
            vm.engine = argv[++i];
        } else {
            name = argv[i];
        }
    }
    if (name == NULL) {
        fprintf(stderr, "usage: threads [--engine E] NAME\n");
        return 2;
    }
    nook_session *s = NULL;
    nook_status st = nook_session_start(name, &vm, &s);
    if (st != NOOK_OK) {
        fprintf(stderr, "threads: start: %s: %s\n", nook_status_name(st), nook_last_error());
        nook_session_remove(name, true);
        return 1;
    }
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    pthread_t threads[THREADS];
    struct job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct job){s, i, 0, 0, &barrier};
        pthread_create(&threads[i], NULL, work, &jobs[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        printf("thread %d: %d/%d execs ok, own error %s\n", i, jobs[i].execs_ok, EXECS,
               jobs[i].own_error ? "ok" : "WRONG");
    }
    pthread_barrier_destroy(&barrier);
    nook_session_free(s);
    nook_session_remove(name, true);
    return 0;
}
