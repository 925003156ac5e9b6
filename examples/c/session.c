/*
 * session.c: a session with libnook: start it, run commands (captured and
 * streamed), copy a file in and out, snapshot it, start a second session
 * from the snapshot, stop and remove both.
 *
 *   session [--engine auto|qemu|kvm] NAME
 *
 * Sessions are hosted by the `nook` binary: NOOK_BIN names it, else `nook`
 * on PATH. Prints what each step saw; exits 0 when every step worked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nook.h"

/* Fails the example with the step's name, status and nook's message. */
#define CHECK(step, call)                                                   \
    do {                                                                    \
        nook_status st_ = (call);                                           \
        if (st_ != NOOK_OK) {                                               \
            fprintf(stderr, "session: %s: %s: %s\n", step,                 \
                    nook_status_name(st_), nook_last_error());              \
            failed = 1;                                                     \
            goto done;                                                      \
        }                                                                   \
    } while (0)

/* A streaming callback: prefixes each piece of output. */
static int print_piece(void *user_data, const uint8_t *data, size_t len) {
    printf("%s%.*s", (const char *)user_data, (int)len, (const char *)data);
    return 0;
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
        fprintf(stderr, "usage: session [--engine E] NAME\n");
        return 2;
    }
    char clone_name[128], snap_name[128], host_in[256], host_out[256];
    snprintf(clone_name, sizeof clone_name, "%s-clone", name);
    snprintf(snap_name, sizeof snap_name, "%s-snap", name);
    snprintf(host_in, sizeof host_in, "/tmp/%s-in.txt", name);
    snprintf(host_out, sizeof host_out, "/tmp/%s-out.txt", name);

    int failed = 0;
    nook_session *s = NULL, *clone = NULL;
    nook_output out = {0};

    CHECK("start", nook_session_start(name, &vm, &s));
    printf("started %s\n", nook_session_name(s));

    /* Captured output, with an environment variable. */
    const char *echo[] = {"sh", "-c", "echo hello from $WHO", NULL};
    const char *env[] = {"WHO=c", NULL};
    nook_exec_options exec;
    nook_exec_options_init(&exec);
    exec.env = env;
    CHECK("exec", nook_session_exec(s, echo, &exec, &out));
    printf("exec: %s", (const char *)out.stdout_data);
    nook_free_output(&out);

    /* Bytes on the command's stdin. */
    const char *cat_stdin[] = {"cat", NULL};
    const char *input = "piped in\n";
    nook_exec_options with_stdin;
    nook_exec_options_init(&with_stdin);
    with_stdin.stdin_data = (const uint8_t *)input;
    with_stdin.stdin_len = strlen(input);
    CHECK("exec with stdin", nook_session_exec(s, cat_stdin, &with_stdin, &out));
    printf("stdin: %s", (const char *)out.stdout_data);
    nook_free_output(&out);

    /* Streamed output, and an exit code. */
    const char *count[] = {"sh", "-c", "for i in 1 2 3; do echo $i; done; exit 7", NULL};
    nook_callbacks cb = {print_piece, print_piece, "stream: "};
    nook_exit exit_status;
    CHECK("exec_stream", nook_session_exec_stream(s, count, NULL, &cb, &exit_status));
    printf("stream exit: %d\n", exit_status.exit_code);

    /* A file in, changed in the guest, and out again. */
    FILE *f = fopen(host_in, "w");
    if (f == NULL) {
        perror(host_in);
        failed = 1;
        goto done;
    }
    fputs("from the host\n", f);
    fclose(f);
    uint64_t bytes = 0;
    CHECK("copy_in", nook_session_copy_in(s, host_in, "/root/note.txt", &bytes));
    printf("copied in %llu bytes\n", (unsigned long long)bytes);
    const char *append[] = {"sh", "-c", "echo and the guest >> /root/note.txt", NULL};
    CHECK("exec append", nook_session_exec(s, append, NULL, &out));
    nook_free_output(&out);
    CHECK("copy_out", nook_session_copy_out(s, "/root/note.txt", host_out, &bytes));
    f = fopen(host_out, "r");
    char line[128];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        printf("copied out: %s", line);
    }
    if (f != NULL) {
        fclose(f);
    }

    /* A snapshot, and a second session started from it: the file is there. */
    CHECK("snapshot", nook_session_snapshot(s, snap_name));
    printf("snapshot %s\n", snap_name);
    nook_vm_options from_snap;
    nook_vm_options_init(&from_snap);
    from_snap.engine = vm.engine;
    from_snap.snapshot = snap_name;
    CHECK("start from snapshot", nook_session_start(clone_name, &from_snap, &clone));
    const char *cat[] = {"cat", "/root/note.txt", NULL};
    CHECK("exec in clone", nook_session_exec(clone, cat, NULL, &out));
    printf("clone: %s", (const char *)out.stdout_data);
    nook_free_output(&out);

    /* A one-off run from the same snapshot, as `nook run --snapshot` does. */
    const char *first_line[] = {"head", "-n", "1", "/root/note.txt", NULL};
    CHECK("run from snapshot", nook_run(&from_snap, first_line, NULL, &out));
    printf("run from snapshot: %s", (const char *)out.stdout_data);
    nook_free_output(&out);

    /* A stopped session refuses commands with a status and a message. */
    CHECK("stop", nook_session_stop(s));
    nook_status st = nook_session_exec(s, echo, NULL, &out);
    printf("exec after stop: %s: %s\n", nook_status_name(st), nook_last_error());
    nook_free_output(&out);

done:
    nook_free_output(&out);
    nook_session_free(s);
    nook_session_free(clone);
    nook_session_remove(name, true);
    nook_session_remove(clone_name, true);
    nook_snapshot_remove(snap_name);
    unlink(host_in);
    unlink(host_out);
    return failed;
}
