//! The kvm engine's seccomp filters: a vCPU thread that makes a system
//! call outside its filter ends the process with a line naming the call,
//! while the same guest runs to its end with filters off. The VM runs in
//! a child process (this test binary again, one test selected) so the
//! harness survives the kill.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nook_vmm::{ExitReason, KvmConfig, KvmVm, MmioHook, SerialSink};

/// Where the guest writes to reach the hook: in the 32-bit MMIO gap,
/// below the virtio windows.
const HOOK_ADDR: u64 = 0xc000_0000;
/// Set in the child: which hook to run.
const CHILD_ENV: &str = "NOOK_SECCOMP_TEST_CHILD";
const TIMEOUT: Duration = Duration::from_secs(20);

/// The child's part: boots a guest whose MMIO write runs `socket(2)` on
/// its vCPU thread (on no allow-list), then powers off. Prints what the
/// VM did; the parent reads it.
fn child() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.serial_byte(b'a');
    g.mmio_w(HOOK_ADDR, 0, 1);
    g.serial_byte(b'b');
    g.poweroff();
    let kernel = g.write(dir.path());
    let serial = SharedBuf::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut cfg = KvmConfig::new(&kernel);
    cfg.memory_mib = 64;
    cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
    let counted = calls.clone();
    cfg.mmio_hook = Some(MmioHook {
        addr: HOOK_ADDR,
        call: Arc::new(move || {
            // SAFETY: a plain system call; the fd, if any, is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
            }
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    });
    let mut vm = KvmVm::start(cfg).unwrap();
    let end = vm.wait_timeout(TIMEOUT).unwrap();
    println!(
        "child: exit {end:?}, hook calls {}, serial {:?}",
        calls.load(Ordering::SeqCst),
        serial.text()
    );
    assert_eq!(end, Some(ExitReason::PowerOff));
}

/// Runs this test again in a child process, with `env` set.
fn run_child(env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "a_vcpu_thread_making_a_disallowed_call_ends_the_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("NOOK_NO_SECCOMP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_vcpu_thread_making_a_disallowed_call_ends_the_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let out = run_child(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(nook_seccomp::SIGSYS_EXIT_CODE),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("nook: seccomp: a thread under filter `vcpu` made system call 41 (socket"),
        "stderr: {stderr}"
    );
    assert!(!stdout.contains("child: exit"), "the VM went on: {stdout}");

    // The same guest with filters off: the hook runs, the guest powers off.
    let out = run_child(&[("NOOK_NO_SECCOMP", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("child: exit Some(PowerOff), hook calls 1, serial \"ab\""),
        "{stdout}"
    );
}
