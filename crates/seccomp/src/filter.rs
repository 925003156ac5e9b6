//! Compiling the JSON filters once and installing one on the calling thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, TargetArch};

use crate::sigsys;

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
    /// A virtio-fs queue worker of the vhost-user server (`nook-fs-*`).
    Fs,
}

impl ThreadFilter {
    /// The filter's key in the JSON file (also what the SIGSYS line names).
    pub fn name(self) -> &'static str {
        match self {
            ThreadFilter::Vcpu => "vcpu",
            ThreadFilter::Vmm => "vmm",
            ThreadFilter::Fs => "fs",
        }
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

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static SWITCH: AtomicU8 = AtomicU8::new(UNSET);

/// Turns filters on or off for threads that call [`apply`] from now on
/// (a thread that has one keeps it). For debugging only.
pub fn set_enabled(on: bool) {
    SWITCH.store(if on { ON } else { OFF }, Ordering::SeqCst);
}

/// Whether [`apply`] installs filters: on unless turned off by
/// [`set_enabled`] or `NOOK_NO_SECCOMP=1` (read once).
pub fn enabled() -> bool {
    match SWITCH.load(Ordering::SeqCst) {
        ON => true,
        OFF => false,
        _ => {
            let off = std::env::var_os("NOOK_NO_SECCOMP").is_some_and(|v| v == "1");
            let _ = SWITCH.compare_exchange(
                UNSET,
                if off { OFF } else { ON },
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            SWITCH.load(Ordering::SeqCst) == ON
        }
    }
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
    let program = programs()?.get(name).ok_or(SeccompError::Missing(name))?;
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    sigsys::set_thread_filter(name);
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { name, source })?;
    FILTERED.with(|f| f.set(true));
    Ok(Applied::Installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_filters_compile_and_name_every_thread_kind() {
        let map = programs().expect("filters/x86_64.json compiles");
        for f in [ThreadFilter::Vcpu, ThreadFilter::Vmm, ThreadFilter::Fs] {
            assert!(map.contains_key(f.name()), "filter {} missing", f.name());
        }
        assert_eq!(map.len(), 3, "a filter nothing installs: {:?}", map.keys());
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

    /// In a child process (this test again): `execve` under the `fs`
    /// filter ends the process with the report line naming it.
    #[test]
    fn a_call_outside_the_filter_ends_the_process_with_a_line_naming_it() {
        if std::env::var_os("NOOK_SECCOMP_UNIT_CHILD").is_some() {
            set_enabled(true);
            apply(ThreadFilter::Fs).unwrap();
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: a NUL-terminated path and argv; on success the
            // process image is replaced (which the filter must prevent).
            unsafe { libc::execv(argv[0], argv.as_ptr()) };
            println!("child: still running");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "filter::tests::a_call_outside_the_filter_ends_the_process_with_a_line_naming_it",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NOOK_SECCOMP_UNIT_CHILD", "1")
            .env_remove("NOOK_NO_SECCOMP")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(crate::SIGSYS_EXIT_CODE),
            "stderr: {stderr}"
        );
        assert!(
            stderr
                .contains("nook: seccomp: a thread under filter `fs` made system call 59 (execve"),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("still running"));
    }
}
