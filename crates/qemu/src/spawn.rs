//! Spawning QEMU so that it can never outlive the process that started it.
//!
//! Three things are set up in the child between `fork` and `exec`:
//!
//! 1. its own process group, so a terminal's Ctrl-C reaches nook, which then
//!    stops the VM in order, instead of killing QEMU behind nook's back;
//! 2. `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills QEMU when its parent
//!    dies, however it dies (SIGKILL, abort on panic, OOM kill). A parent that
//!    died between `fork` and `prctl` is caught by comparing `getppid()` with
//!    the pid recorded before the fork;
//! 3. the child's ends of the agent and QMP socket pairs lose `FD_CLOEXEC` so
//!    QEMU inherits them (`-chardev socket,fd=N`);
//! 4. when the caller hands a prepared Landlock ruleset (confinement on,
//!    unless `NOOK_NO_CONFINE=1`): no core files, a bounded number of open
//!    files, no capabilities (even as root), no new privileges
//!    (`nook_seccomp::limit_process`, `nook_seccomp::drop_all_privileges`),
//!    and then the Landlock domain that leaves QEMU only its own files
//!    (built before the fork by `nook_seccomp::exec_ruleset`, entered with
//!    one system call, `ExecRuleset::enter`; see the `reach` module).
//!
//! The death signal fires when the *thread* that forked exits, not the
//! process. A QEMU spawned from a short-lived thread (a tokio blocking-pool
//! thread, a scoped worker) would be killed when that thread ends. So every
//! spawn is handed to one dedicated thread, `nook-qemu-spawner`, that is
//! started on first use and lives as long as the process; the caveat then
//! never applies and callers may start VMs from any thread.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;

use nook_seccomp::ExecRuleset;

struct SpawnRequest {
    command: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Spawns `command` from the long-lived spawner thread, in a new process
/// group, with a parent-death signal, passing `inherit_fds` to the child;
/// with `confine`, also with limits, no privileges and that Landlock
/// ruleset. The ruleset's descriptor lives in the hook, so it stays open
/// until the command is spawned (and never reaches the child's program:
/// it is close-on-exec).
pub(crate) fn spawn_guarded(
    mut command: Command,
    inherit_fds: Vec<RawFd>,
    confine: Option<ExecRuleset>,
) -> io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| io::Error::other("process id does not fit in pid_t"))?;
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, fcntl, setrlimit,
    // capset, landlock_restrict_self) on values it owns; it does not
    // allocate or take locks.
    unsafe {
        command.pre_exec(move || {
            child_setup(parent, &inherit_fds)?;
            if let Some(rules) = &confine {
                nook_seccomp::limit_process()?;
                // Sets no-new-privileges, which Landlock requires.
                nook_seccomp::drop_all_privileges()?;
                rules.enter()?;
            }
            Ok(())
        });
    }
    let sender = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("nook-qemu-spawner".into())
                .spawn(move || {
                    for mut req in rx {
                        // The caller may have given up; nothing to do then,
                        // and dropping the Child does not kill it, so kill it.
                        let result = req.command.spawn();
                        if let Err(mpsc::SendError(Ok(mut orphan))) = req.reply.send(result) {
                            let _ = orphan.kill();
                            let _ = orphan.wait();
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
        .ok_or_else(|| io::Error::other("cannot start the nook-qemu-spawner thread"))?;
    let (reply, result) = mpsc::sync_channel(1);
    sender
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the nook-qemu-spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the nook-qemu-spawner thread dropped a request"))?
}

/// Runs in the child between fork and exec.
fn child_setup(parent: libc::pid_t, inherit_fds: &[RawFd]) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no memory
    // effects.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // The parent died before the death signal was armed.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    for &fd in inherit_fds {
        // SAFETY: F_SETFD on an fd number only changes that descriptor's
        // flags; an invalid fd yields EBADF, which is reported.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn child_runs_in_own_group_with_inherited_fd() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        // Prints its pgid and pid, then writes into the inherited fd.
        cmd.arg("-c").arg(format!(
            "set -e; read -r _ _ _ _ pgid _ < /proc/$$/stat; echo \"$pgid $$\"; \
             echo hello >&{fd}"
        ));
        cmd.stdout(std::process::Stdio::piped());
        let child = spawn_guarded(cmd, vec![fd], None).unwrap();
        drop(theirs);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace();
        let (pgid, pid) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(pgid, pid, "child must lead its own process group");
        let mut got = String::new();
        io::Read::read_to_string(&mut &ours, &mut got).unwrap();
        assert_eq!(got, "hello\n");
    }

    #[test]
    fn spawns_from_any_thread_via_the_spawner() {
        let handle = std::thread::spawn(|| {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg("exit 7");
            spawn_guarded(cmd, Vec::new(), None).unwrap()
        });
        let mut child = handle.join().unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
}
