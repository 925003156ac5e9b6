//! Resource limits of nook's host-side processes (session hosts, the
//! daemon, QEMU): no core files (they would hold guest memory and session
//! data) and a bounded number of open files.

/// Open files a session host, the daemon or QEMU may hold at once (soft
/// and hard limit; lowered to the inherited hard limit if that is less).
pub const MAX_OPEN_FILES: u64 = 16_384;

/// Sets `RLIMIT_CORE` to 0 and `RLIMIT_NOFILE` to [`MAX_OPEN_FILES`] (or
/// the inherited hard limit if lower) for the calling process.
///
/// Only makes system calls (`getrlimit`, `setrlimit`), so it may run
/// between `fork` and `exec` (a `pre_exec` hook).
pub fn limit_process() -> std::io::Result<()> {
    set(libc::RLIMIT_CORE, 0)?;
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `cur`, which is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    set(libc::RLIMIT_NOFILE, MAX_OPEN_FILES.min(cur.rlim_max))
}

fn set(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads one valid rlimit; it changes only limits.
    if unsafe { libc::setrlimit(resource, &lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Drops every capability of the calling thread (effective, permitted,
/// inheritable, ambient and bounding sets) and sets no-new-privileges, so
/// the program it executes next runs with none, even as root.
///
/// Only makes system calls (`prctl`, `capset`), so it may run between
/// `fork` and `exec` (a `pre_exec` hook).
pub fn drop_all_privileges() -> std::io::Result<()> {
    crate::confine::no_new_privs()?;
    // SAFETY: prctl with integer arguments; changes only this thread.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // Bounding set: every capability the kernel knows (EINVAL past the last).
    for cap in 0..64 {
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL) => break,
                // Without CAP_SETPCAP the bounding set stays; the empty
                // permitted set below still holds across exec with
                // no-new-privileges.
                Some(libc::EPERM) => break,
                _ => return Err(e),
            }
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a version-3 header and two data words, both
    // valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
/// The calling process's soft and hard limit of `resource`.
fn current(resource: libc::__rlimit_resource_t) -> std::io::Result<(u64, u64)> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `cur`, which is valid.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cur.rlim_cur, cur.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (this test again), so the harness keeps its
    /// limits.
    #[test]
    fn limits_are_no_core_and_bounded_open_files_and_privileges_drop() {
        if std::env::var_os("NOOK_LIMITS_UNIT_CHILD").is_some() {
            limit_process().unwrap();
            let core = current(libc::RLIMIT_CORE).unwrap();
            let files = current(libc::RLIMIT_NOFILE).unwrap();
            println!("child: core {core:?} files {files:?}");
            drop_all_privileges().unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let f = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    .unwrap()
            };
            println!(
                "child: after drop: CapEff {} CapPrm {} NoNewPrivs {}",
                f("CapEff:"),
                f("CapPrm:"),
                f("NoNewPrivs:")
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "limits::tests::limits_are_no_core_and_bounded_open_files_and_privileges_drop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NOOK_LIMITS_UNIT_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let hard = current(libc::RLIMIT_NOFILE).unwrap().1.min(MAX_OPEN_FILES);
        assert!(
            stdout.contains(
                "child: after drop: CapEff 0000000000000000 CapPrm 0000000000000000 NoNewPrivs 1"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("child: core (0, 0) files ({hard}, {hard})")),
            "{stdout}"
        );
    }
}
