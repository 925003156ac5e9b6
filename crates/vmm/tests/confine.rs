//! Confinement of the kvm engine's threads: a vCPU thread and the
//! `nook-vmm` event loop run with no new privileges, a seccomp filter and
//! reduced capabilities; under Landlock a vCPU thread opens no file (seen
//! with seccomp off, which would otherwise stop the attempt first); and
//! `NOOK_NO_CONFINE` (here `set_confine_enabled(false)`) turns it off.
//! One test, so the process-wide switches it flips affect nothing else.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nook_vmm::{ExitReason, KvmConfig, KvmVm, MmioHook};

/// Where the guest writes to reach the hook (the 32-bit MMIO gap).
const HOOK_ADDR: u64 = 0xc000_0000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Boots a guest that calls `hook` once on its vCPU thread, then powers
/// off; with a read-only share of `share_dir` if given.
fn run_guest(share_dir: Option<&std::path::Path>, hook: Arc<dyn Fn() + Send + Sync>) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.mmio_w(HOOK_ADDR, 0, 1);
    g.poweroff();
    let kernel = g.write(dir.path());
    let mut cfg = KvmConfig::new(&kernel);
    cfg.memory_mib = 64;
    if let Some(d) = share_dir {
        cfg.shares = vec![share_config(d, "conf")];
    }
    cfg.mmio_hook = Some(MmioHook {
        addr: HOOK_ADDR,
        call: hook,
    });
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(
        vm.wait_timeout(TIMEOUT).unwrap(),
        Some(ExitReason::PowerOff)
    );
}

/// `/proc` status lines of this process's threads named `name`.
fn statuses(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .collect()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// The errno of opening `path` from the vCPU thread (0: it opened).
fn open_errno_on_vcpu(path: &'static str) -> i32 {
    let errno = Arc::new(Mutex::new(-1));
    let seen = errno.clone();
    run_guest(
        None,
        Arc::new(move || {
            let e =
                std::fs::File::open(path).map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0);
            *seen.lock().unwrap() = e;
        }),
    );
    let e = *errno.lock().unwrap();
    e
}

#[test]
fn kvm_threads_run_confined() {
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    nook_seccomp::set_enabled(true);
    nook_seccomp::set_confine_enabled(true);

    // 1. Filters and confinement on, a share: while the guest sits in the
    //    hook, read the threads' status from this (unconfined) thread.
    let share = tempfile::tempdir().unwrap();
    let (in_hook, wait_in_hook) = mpsc::channel::<()>();
    let (go, wait_go) = mpsc::channel::<()>();
    let (in_hook, wait_go) = (Mutex::new(in_hook), Mutex::new(wait_go));
    let checker = std::thread::spawn(move || {
        wait_in_hook.recv().unwrap();
        // The device thread confines itself as it takes up the event loop,
        // which may come after the vCPU reached the hook (seen: Seccomp 0
        // on a just-started nook-vmm thread): wait for that, within limits.
        let deadline = Instant::now() + TIMEOUT;
        while statuses("nook-vmm")
            .iter()
            .any(|s| field(s, "Seccomp:") != "2")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = (statuses("nook-vcpu0"), statuses("nook-vmm"));
        go.send(()).unwrap();
        seen
    });
    run_guest(
        Some(share.path()),
        Arc::new(move || {
            in_hook.lock().unwrap().send(()).unwrap();
            wait_go.lock().unwrap().recv().unwrap();
        }),
    );
    let (vcpus, vmms) = checker.join().unwrap();
    assert!(!vcpus.is_empty() && !vmms.is_empty(), "threads not found");
    for s in vcpus.iter().chain(&vmms) {
        assert_eq!(field(s, "Seccomp:"), "2", "{s}");
        assert_eq!(field(s, "NoNewPrivs:"), "1", "{s}");
    }
    for s in &vcpus {
        assert_eq!(field(s, "CapEff:"), "0000000000000000", "{s}");
        assert_eq!(field(s, "CapPrm:"), "0000000000000000", "{s}");
    }
    let file_server: u64 = nook_seccomp::FILE_SERVER_CAPS
        .iter()
        .map(|c| c.bitmask())
        .sum();
    for s in &vmms {
        let eff = u64::from_str_radix(field(s, "CapEff:"), 16).unwrap();
        assert_eq!(eff & !file_server, 0, "{s}");
    }

    // 2. Seccomp off (it would end the process at `openat` first): Landlock
    //    alone refuses the vCPU thread any file.
    nook_seccomp::set_enabled(false);
    if nook_seccomp::landlock_abi().is_some() {
        assert_eq!(open_errno_on_vcpu("/etc/hostname"), libc::EACCES);
    } else {
        eprintln!("skipping the landlock check: no landlock in this kernel");
    }

    // 3. Confinement off as well: the same open succeeds.
    nook_seccomp::set_confine_enabled(false);
    assert_eq!(open_errno_on_vcpu("/etc/hostname"), 0);
}
