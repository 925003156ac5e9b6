/*
 * errors.c: libnook's error paths from C. Each case must return its
 * status with a message, and never abort. Prints one line per case:
 *   CASE STATUS_NAME: MESSAGE
 *
 *   errors [--engine auto|qemu|kvm] NAME
 *
 * NAME names a session this program starts and stops (so that it can
 * check what a stopped session says); it is removed at the end.
 */
#include <stdio.h>
#include <string.h>

#include "nook.h"

static void report(const char *what, nook_status st) {
    printf("%s %s: %s\n", what, nook_status_name(st), nook_last_error());
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
        fprintf(stderr, "usage: errors [--engine E] NAME\n");
        return 2;
    }
    const char *cmd[] = {"true", NULL};
    nook_output out;
    nook_session *s = NULL;

    /* An image reference that does not parse, and one no registry has. */
    nook_vm_options bad = vm;
    bad.image = "Not A Valid Image!";
    report("bad-image", nook_run(&bad, cmd, NULL, &out));
    nook_free_output(&out);
    bad.image = "127.0.0.1:9/nook-capi-absent:1";
    report("absent-image", nook_run(&bad, cmd, NULL, &out));
    nook_free_output(&out);

    /* Null arguments. */
    report("null-out", nook_run(&vm, cmd, NULL, NULL));
    report("null-session", nook_session_exec(NULL, cmd, NULL, &out));
    report("null-name", nook_session_open(NULL, &s));

    /* Sessions that do not exist. */
    report("unknown-session", nook_session_open("capi-no-such-session", &s));
    report("bad-session-name", nook_session_open("../etc", &s));
    report("unknown-snapshot", nook_snapshot_remove("capi-no-such-snapshot"));

    /* A stopped session. */
    nook_status st = nook_session_start(name, &vm, &s);
    if (st != NOOK_OK) {
        report("start", st);
        nook_session_remove(name, true);
        return 1;
    }
    /* A command its timeout kills: the status says so, the output is there. */
    const char *slow[] = {"sh", "-c", "echo started; sleep 30", NULL};
    nook_exec_options quick;
    nook_exec_options_init(&quick);
    quick.timeout_ms = 1000;
    st = nook_session_exec(s, slow, &quick, &out);
    printf("timeout %s: %s (exit %d, timed_out %d, stdout %zu bytes)\n", nook_status_name(st),
           nook_last_error(), out.exit.exit_code, out.exit.timed_out, out.stdout_len);
    nook_free_output(&out);
    /* A program the guest does not have. */
    const char *missing[] = {"/no/such/program", NULL};
    report("no-program", nook_session_exec(s, missing, NULL, &out));
    nook_free_output(&out);

    report("stop", nook_session_stop(s));
    report("exec-stopped", nook_session_exec(s, cmd, NULL, &out));
    nook_free_output(&out);
    report("copy-stopped", nook_session_copy_in(s, "/etc/hostname", "/tmp/h", NULL));
    report("snapshot-stopped", nook_session_snapshot(s, "capi-never"));
    nook_session *again = NULL;
    report("open-stopped", nook_session_open(name, &again));
    nook_session_free(again);
    nook_session_free(s);
    report("remove", nook_session_remove(name, false));
    report("remove-again", nook_session_remove(name, false));
    return 0;
}
