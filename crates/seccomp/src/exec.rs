//! Landlock for a program nook starts (QEMU): the ruleset is built in the
//! parent, where allocating and opening files is safe, and entered in the
//! forked child between `fork` and `exec` with one system call, so the
//! program runs under it from its first instruction.
//!
//! A child of a multi-threaded process may only make async-signal-safe
//! calls before `exec` (no allocation, no locks): [`ExecRuleset::enter`]
//! is a single `landlock_restrict_self(2)` on a descriptor opened earlier.

use std::os::fd::{AsRawFd, OwnedFd};

use landlock::ABI;

use crate::confine::{landlock_abi, ruleset, ConfineError, FsReach, LandlockStatus};

/// The Landlock ABI asked for a started program: file and TCP rights as
/// for threads (ABI 5, device ioctls included), plus ABI 6's scopes (no
/// signals to, and no abstract Unix sockets of, processes outside the
/// domain). A program is a process of its own, so unlike nook's threads it
/// has no sibling outside its domain that it must signal.
const EXEC_LANDLOCK_ABI: ABI = ABI::V6;

/// A Landlock ruleset prepared for a program about to be started: file
/// access only beneath the given paths, no TCP, no signals out of its
/// domain. Built by [`exec_ruleset`] in the parent; entered by
/// [`ExecRuleset::enter`] in the child after `PR_SET_NO_NEW_PRIVS`.
#[derive(Debug)]
pub struct ExecRuleset {
    /// The ruleset's descriptor (close-on-exec: the program never sees
    /// it); `None` without Landlock.
    fd: Option<OwnedFd>,
    status: LandlockStatus,
}

/// Builds the ruleset that leaves only `reach` reachable for a program
/// about to be started (see [`ExecRuleset`]). Paths that do not exist are
/// left out. On a kernel without Landlock the ruleset is empty and
/// [`ExecRuleset::enter`] does nothing (best effort, as for threads).
pub fn exec_ruleset(reach: &[FsReach]) -> Result<ExecRuleset, ConfineError> {
    let Some(kernel) = landlock_abi() else {
        return Ok(ExecRuleset {
            fd: None,
            status: LandlockStatus::Unavailable,
        });
    };
    let created = ruleset(reach, EXEC_LANDLOCK_ABI).map_err(ConfineError::Landlock)?;
    let fd: Option<OwnedFd> = created.into();
    let status = match fd {
        None => LandlockStatus::Unavailable,
        Some(_) if kernel >= EXEC_LANDLOCK_ABI as u32 => LandlockStatus::Full(kernel),
        Some(_) => LandlockStatus::Partial(kernel),
    };
    Ok(ExecRuleset { fd, status })
}

impl ExecRuleset {
    /// How far the ruleset confines the program.
    pub fn status(&self) -> LandlockStatus {
        self.status
    }

    /// Enters the ruleset: the calling thread, and the program it
    /// executes next, can then reach only the ruleset's paths. The thread
    /// must have set no-new-privileges first (or hold `CAP_SYS_ADMIN`).
    ///
    /// Only makes one system call on a descriptor opened earlier, so it
    /// may run between `fork` and `exec` (a `pre_exec` hook).
    pub fn enter(&self) -> std::io::Result<()> {
        let Some(fd) = &self.fd else {
            return Ok(());
        };
        // SAFETY: landlock_restrict_self takes a descriptor number and a
        // flags word and touches no memory of ours; `fd` is a ruleset
        // descriptor this value owns, open for its lifetime.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// A shell started under a prepared ruleset reads and writes in its
    /// read-write directory, reads its read-only file, and gets "Permission
    /// denied" for a file outside both, writing the read-only file, and
    /// signalling its parent; the parent (this test) is untouched.
    #[test]
    fn a_program_started_under_the_ruleset_reaches_only_its_paths() {
        let rw = tempfile::tempdir().unwrap();
        let ro = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ro.path(), b"ro\n").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"secret\n").unwrap();
        let mut reach: Vec<FsReach> = ["/usr", "/lib", "/lib64", "/bin", "/etc"]
            .iter()
            .map(|p| FsReach {
                path: p.into(),
                write: false,
            })
            .collect();
        reach.push(FsReach {
            path: rw.path().to_owned(),
            write: true,
        });
        reach.push(FsReach {
            path: ro.path().to_owned(),
            write: false,
        });
        let rules = exec_ruleset(&reach).unwrap();
        if rules.status() == LandlockStatus::Unavailable {
            eprintln!("skipping: no landlock in this kernel");
            return;
        }
        let script = format!(
            "echo in > {rw}/f && cat {rw}/f && cat {ro} && \
             (cat {out} || echo denied-read) && (echo x >> {ro} || echo denied-write) && \
             (kill -0 $PPID 2>/dev/null && echo signalled || echo denied-signal)",
            rw = rw.path().display(),
            ro = ro.path().display(),
            out = outside.path().display(),
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        // SAFETY: the hook makes two system calls (prctl, and
        // landlock_restrict_self on a descriptor opened before the fork);
        // it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || {
                crate::confine::no_new_privs()?;
                rules.enter()
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want_signal = if landlock_abi().is_some_and(|v| v >= 6) {
            "denied-signal"
        } else {
            "signalled"
        };
        assert_eq!(
            stdout,
            format!("in\nro\ndenied-read\ndenied-write\n{want_signal}\n"),
            "{stderr}"
        );
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"secret\n");
    }
}
