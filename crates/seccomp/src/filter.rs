//! Compiling the JSON filters once and installing one on the calling thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, TargetArch};

use crate::sigsys;
use crate::switch::Switch;

/// The filters, as checked into the repository.
const FILTERS_JSON: &str = include_str!("../filters/x86_64.json");

/// Which allow-list a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadFilter {
    /// A kvm-engine vCPU thread (`nook-vcpu{N}`): `KVM_RUN` and the state
    /// reads of a snapshot, the device emulation of MMIO and port exits.
    Vcpu,
    /// The kvm engine's device event loop (`nook-vmm`): queue processing of
    /// every virtio device, including the in-process virtio-fs server.
    Vmm,
    /// A virtio-fs queue worker of the vhost-user server (`nook-fs-*-q`).
    Fs,
    /// The vhost-user server's `nook-fs-TAG` threads: the one that accepts
    /// QEMU's connection and the protocol thread it starts (memory table,
    /// vring set-up; no file access).
    FsProto,
    /// A whole session host process (`nook __session-host`): a deny-list
    /// of dangerous calls (tracing, BPF, kexec, modules, keys, mounts and
    /// namespaces, ...), on every thread.
    SessionHost,
    /// The whole daemon process (`nook serve`, also with `--e2b`): the same
    /// deny-list less mounts, `chroot` and namespaces, which the Debian
    /// image builds it starts (mmdebstrap) need.
    Daemon,
}

/// Every thread kind, for tests and documentation.
pub const ALL_FILTERS: [ThreadFilter; 6] = [
    ThreadFilter::Vcpu,
    ThreadFilter::Vmm,
    ThreadFilter::Fs,
    ThreadFilter::FsProto,
    ThreadFilter::SessionHost,
    ThreadFilter::Daemon,
];

impl ThreadFilter {
    /// The filter's key in the JSON file (also what the SIGSYS line names).
    pub fn name(self) -> &'static str {
        match self {
            ThreadFilter::Vcpu => "vcpu",
            ThreadFilter::Vmm => "vmm",
            ThreadFilter::Fs => "fs",
            ThreadFilter::FsProto => "fs_proto",
            ThreadFilter::SessionHost => "session_host",
            ThreadFilter::Daemon => "daemon",
        }
    }

    /// Filters stacked under the first that make some calls fail with an
    /// error instead of ending the process (the kernel applies the
    /// strictest answer of all filters):
    /// - `eacces_open`: `open`/`openat` fail with `EACCES` on threads that
    ///   open no files. glibc's allocator opens
    ///   `/proc/sys/vm/overcommit_memory` once per process, from whichever
    ///   thread first trims a heap of its own arena, and lives without
    ///   it; a vCPU thread freeing memory was ended by its filter for that
    ///   (about one `synthetic` test run in six with many test threads).
    ///   Landlock refuses these threads every file as well.
    /// - `enosys_clone3`: `clone3`, whose flags a filter cannot read, so
    ///   glibc falls back to `clone`, whose flags it can;
    /// - `enosys_service`: `io_uring_*`, which children such as QEMU probe
    ///   and live without.
    fn stacked(self) -> &'static [&'static str] {
        match self {
            ThreadFilter::Vcpu => &["eacces_open"],
            ThreadFilter::FsProto => &["eacces_open", "enosys_clone3"],
            ThreadFilter::SessionHost | ThreadFilter::Daemon => &["enosys_service"],
            ThreadFilter::Vmm | ThreadFilter::Fs => &[],
        }
    }

    /// Whether the filter covers every thread of the process (installed
    /// with `SECCOMP_FILTER_FLAG_TSYNC`), not only the calling one.
    fn whole_process(self) -> bool {
        matches!(self, ThreadFilter::SessionHost | ThreadFilter::Daemon)
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The filter is now on for this thread.
    Installed,
    /// This thread already runs under a filter (threads are reused from
    /// one VM to the next; filters cannot be removed or need re-adding).
    AlreadyOn,
    /// Filters are turned off (`NOOK_NO_SECCOMP=1` or [`set_enabled`]).
    Disabled,
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The checked-in JSON does not compile (a defect caught by the tests).
    #[error("cannot compile the seccomp filters")]
    Compile(#[source] seccompiler::Error),
    /// The JSON has no filter of this name.
    #[error("no seccomp filter named {0}")]
    Missing(&'static str),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install seccomp filter {name}")]
    Install {
        /// The filter's name.
        name: &'static str,
        /// The kernel's refusal.
        #[source]
        source: seccompiler::Error,
    },
}

static SWITCH: Switch = Switch::new("NOOK_NO_SECCOMP");

/// Turns filters on or off for threads that call [`apply`] from now on
/// (a thread that has one keeps it). For debugging only.
pub fn set_enabled(on: bool) {
    SWITCH.set(on);
}

/// Whether [`apply`] installs filters: on unless turned off by
/// [`set_enabled`] or `NOOK_NO_SECCOMP=1` (read once).
pub fn enabled() -> bool {
    SWITCH.on()
}

fn programs() -> Result<&'static HashMap<String, BpfProgram>, SeccompError> {
    static PROGRAMS: OnceLock<HashMap<String, BpfProgram>> = OnceLock::new();
    if let Some(map) = PROGRAMS.get() {
        return Ok(map);
    }
    let map = seccompiler::compile_from_json(FILTERS_JSON.as_bytes(), TargetArch::x86_64)
        .map_err(SeccompError::Compile)?;
    Ok(PROGRAMS.get_or_init(|| map))
}

thread_local! {
    static FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// Installs `filter` on the calling thread unless filters are off or the
/// thread already has one. Also sets the thread's no-new-privileges bit.
pub fn apply(filter: ThreadFilter) -> Result<Applied, SeccompError> {
    if !enabled() {
        return Ok(Applied::Disabled);
    }
    if FILTERED.with(Cell::get) {
        return Ok(Applied::AlreadyOn);
    }
    let name = filter.name();
    let get = |key: &'static str| programs()?.get(key).ok_or(SeccompError::Missing(key));
    let program = get(filter.name())?;
    let stacked = filter
        .stacked()
        .iter()
        .map(|key| get(key))
        .collect::<Result<Vec<_>, _>>()?;
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    let install = |p: &BpfProgram| {
        if filter.whole_process() {
            seccompiler::apply_filter_all_threads(p)
        } else {
            seccompiler::apply_filter(p)
        }
        .map_err(|source| SeccompError::Install { name, source })
    };
    if filter.whole_process() {
        sigsys::set_process_filter(name);
    }
    sigsys::set_thread_filter(name);
    for p in stacked {
        install(p)?;
    }
    install(program)?;
    FILTERED.with(|f| f.set(true));
    Ok(Applied::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_filters_compile_and_name_every_thread_kind() {
        let map = programs().expect("filters/x86_64.json compiles");
        let mut used = std::collections::BTreeSet::new();
        for f in ALL_FILTERS {
            used.insert(f.name());
            used.extend(f.stacked());
        }
        for key in &used {
            assert!(map.contains_key(*key), "filter {key} missing");
        }
        assert_eq!(
            map.len(),
            used.len(),
            "a filter nothing installs: {:?}",
            map.keys()
        );
    }

    #[test]
    fn a_filtered_thread_keeps_its_allowed_calls_and_is_not_filtered_twice() {
        set_enabled(true);
        let out = std::thread::spawn(|| {
            let first = apply(ThreadFilter::Vmm).unwrap();
            let second = apply(ThreadFilter::Vmm).unwrap();
            // Allowed: memory, futex, write, clock.
            let v: Vec<u8> = vec![7; 1 << 20];
            let t = std::time::Instant::now();
            (first, second, v.len(), t.elapsed().as_secs() < 5)
        })
        .join()
        .unwrap();
        assert_eq!(out, (Applied::Installed, Applied::AlreadyOn, 1 << 20, true));
    }

    /// Runs `test` (this binary, one test) in a child process with
    /// `NOOK_SECCOMP_UNIT_CHILD` set; returns its exit code, stdout and stderr.
    fn in_child(test: &str) -> (Option<i32>, String, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("NOOK_SECCOMP_UNIT_CHILD", "1")
            .env_remove("NOOK_NO_SECCOMP")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn is_child() -> bool {
        std::env::var_os("NOOK_SECCOMP_UNIT_CHILD").is_some()
    }

    fn assert_ended_by(out: (Option<i32>, String, String), line: &str) {
        let (code, stdout, stderr) = out;
        assert_eq!(code, Some(crate::SIGSYS_EXIT_CODE), "stderr: {stderr}");
        assert!(stderr.contains(line), "{stderr}");
        assert!(!stdout.contains("still running"), "{stdout}");
    }

    /// In a child process (this test again): `execve` under the `fs`
    /// filter ends the process with the report line naming it.
    #[test]
    fn a_call_outside_the_filter_ends_the_process_with_a_line_naming_it() {
        if is_child() {
            set_enabled(true);
            apply(ThreadFilter::Fs).unwrap();
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: a NUL-terminated path and argv; on success the
            // process image is replaced (which the filter must prevent).
            unsafe { libc::execv(argv[0], argv.as_ptr()) };
            println!("child: still running");
            return;
        }
        assert_ended_by(
            in_child(
                "filter::tests::a_call_outside_the_filter_ends_the_process_with_a_line_naming_it",
            ),
            "nook: seccomp: a thread under filter `fs` made system call 59 (execve",
        );
    }

    /// The vhost-user protocol thread's filter: it may start threads (the
    /// server's own), which then run under it, but opens no file.
    #[test]
    fn the_fs_proto_filter_allows_threads_refuses_opens_and_ends_the_process_on_socket() {
        if is_child() {
            set_enabled(true);
            apply(ThreadFilter::FsProto).unwrap();
            let t = std::thread::Builder::new()
                .name("nook-fs-child".into())
                .spawn(|| 7)
                .unwrap();
            println!("child: thread returned {}", t.join().unwrap());
            let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            println!("child: open gave {open:?}");
            // SAFETY: socket takes no pointers; the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: closes the fd just returned (if any).
            unsafe { libc::close(fd) };
            println!("child: still running");
            return;
        }
        let out = in_child(
            "filter::tests::the_fs_proto_filter_allows_threads_refuses_opens_and_ends_the_process_on_socket",
        );
        assert!(out.1.contains("child: thread returned 7"), "{out:?}");
        assert!(out.1.contains("child: open gave Err(Some(13))"), "{out:?}");
        assert_ended_by(
            out,
            "nook: seccomp: a thread under filter `fs_proto` made system call 41 (socket",
        );
    }

    /// A vCPU thread's file opens fail with `EACCES` and it goes on (glibc
    /// opens a file from whichever thread first trims an arena).
    #[test]
    fn a_vcpu_thread_is_refused_files_and_goes_on() {
        if is_child() {
            set_enabled(true);
            apply(ThreadFilter::Vcpu).unwrap();
            let open =
                std::fs::File::open("/proc/sys/vm/overcommit_memory").map_err(|e| e.raw_os_error());
            println!("child: open gave {open:?}");
            println!("child: still running");
            return;
        }
        let (code, stdout, stderr) =
            in_child("filter::tests::a_vcpu_thread_is_refused_files_and_goes_on");
        assert_eq!(code, Some(0), "{stdout} {stderr}");
        assert!(
            stdout.contains("child: open gave Err(Some(13))"),
            "{stdout}"
        );
        assert!(stdout.contains("child: still running"), "{stdout}");
    }

    /// The deny-list of session hosts and the daemon covers every thread
    /// of the process, including one started before it: `ptrace` there
    /// ends the process; ordinary work (files, threads, a child process)
    /// goes on.
    #[test]
    fn the_service_filter_covers_every_thread_and_ends_the_process_on_ptrace() {
        if is_child() {
            set_enabled(true);
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let earlier = std::thread::spawn(move || {
                wait.recv().unwrap();
                // SAFETY: PTRACE_TRACEME takes no pointers.
                unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
                println!("child: still running");
            });
            apply(ThreadFilter::SessionHost).unwrap();
            assert!(std::fs::read("/proc/self/status").is_ok());
            let st = std::process::Command::new("/bin/true").status().unwrap();
            println!("child: ordinary work ok {}", st.success());
            go.send(()).unwrap();
            let _ = earlier.join();
            println!("child: still running");
            return;
        }
        let out = in_child(
            "filter::tests::the_service_filter_covers_every_thread_and_ends_the_process_on_ptrace",
        );
        assert!(out.1.contains("child: ordinary work ok true"), "{out:?}");
        assert_ended_by(
            out,
            "nook: seccomp: a thread under filter `session_host` made system call 101 (ptrace",
        );
    }

    /// The daemon's deny-list: `bpf` ends the process with its line.
    #[test]
    fn the_daemon_filter_ends_the_process_on_bpf() {
        if is_child() {
            set_enabled(true);
            apply(ThreadFilter::Daemon).unwrap();
            // SAFETY: BPF_PROG_LOAD with a null attribute pointer and size 0
            // reads nothing (EINVAL, if it ran at all).
            unsafe { libc::syscall(libc::SYS_bpf, 5, std::ptr::null::<u8>(), 0) };
            println!("child: still running");
            return;
        }
        assert_ended_by(
            in_child("filter::tests::the_daemon_filter_ends_the_process_on_bpf"),
            "nook: seccomp: a thread under filter `daemon` made system call 321 (bpf",
        );
    }
}
