//! QEMU process lifecycle: QMP, shutdown, drop, orphan protection, early
//! exits. Most tests start QEMU paused (`-S`), so the guest never runs and
//! they take milliseconds; they still need `NOOK_TEST_KERNEL` because QEMU
//! loads the kernel before pausing.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nook_qemu::{QemuError, QemuVm, QmpError};
use support::*;

const ORPHAN_ENV: &str = "NOOK_QEMU_TEST_ORPHAN_DIR";

fn paused_vm(dir: &std::path::Path) -> Option<QemuVm> {
    let (qemu, kernel) = qemu_and_kernel()?;
    let mut cfg = tcg_config(&qemu, &kernel, dir);
    cfg.extra_args.push("-S".into());
    Some(QemuVm::start(cfg).unwrap())
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    process_gone(pid)
}

#[test]
fn qmp_query_status_errors_and_quit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut vm) = paused_vm(dir.path()) else {
        return;
    };
    let status = vm.qmp_execute("query-status", None).unwrap();
    assert_eq!(status["status"], "prelaunch", "{status}");
    assert_eq!(status["running"], false);
    let greeting = vm.qmp().unwrap().greeting().clone();
    assert!(
        greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
        "{greeting}"
    );

    match vm.qmp_execute("nook-no-such-command", None) {
        Err(QemuError::Qmp {
            source: QmpError::CommandFailed { class, .. },
            ..
        }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("unexpected {other:?}"),
    }

    // A guest that does not come up is reported as a timeout with the console
    // and stderr attached, and the VM keeps running.
    let err = vm.boot_failure(Duration::from_secs(3));
    assert!(matches!(err, QemuError::BootTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("qemu stderr:"), "{err}");
    assert!(vm.try_wait().unwrap().is_none());

    let pid = vm.pid();
    let status = vm.shutdown(Duration::from_secs(10)).unwrap();
    // QMP quit exits with 0; a SIGKILL would have no exit code.
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(process_gone(pid));
    // Idempotent afterwards.
    assert_eq!(vm.shutdown(Duration::from_secs(1)).unwrap().code(), Some(0));
}

#[test]
fn kill_sends_sigkill_and_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut vm) = paused_vm(dir.path()) else {
        return;
    };
    let status = vm.kill().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(process_gone(vm.pid()));
}

#[test]
fn drop_kills_and_reaps_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let Some(vm) = paused_vm(dir.path()) else {
        return;
    };
    let pid = vm.pid();
    assert!(!process_gone(pid));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(comm.starts_with("qemu"), "{comm}");
    drop(vm);
    // Reaped by drop itself: not even a zombie remains.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} still exists after drop"
    );
}

#[test]
fn vm_started_from_a_finished_thread_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // The death signal is tied to the forking thread; spawning goes through
    // the long-lived spawner thread, so this thread's exit must not matter.
    let vm = std::thread::spawn(move || paused_vm(&path)).join().unwrap();
    let Some(mut vm) = vm else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        vm.try_wait().unwrap().is_none(),
        "qemu died with its thread"
    );
    assert_eq!(
        vm.qmp_execute("query-status", None).unwrap()["running"],
        false
    );
}

#[test]
fn qemu_dies_when_its_parent_is_killed() {
    if qemu_and_kernel().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut helper = Command::new(exe)
        .args(["--ignored", "--exact", "orphan_helper", "--nocapture"])
        .env(ORPHAN_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(helper.stdout.take().unwrap());
    let mut line = String::new();
    let pid: u32 = loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!(
                "helper exited without printing QEMU_PID: {:?}",
                helper.wait()
            );
        }
        if let Some(pid) = line.trim().strip_prefix("QEMU_PID=") {
            break pid.parse().unwrap();
        }
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(comm.starts_with("qemu"), "{comm}");
    helper.kill().unwrap(); // SIGKILL: no destructors run in the helper
    helper.wait().unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "qemu {pid} outlived its SIGKILLed parent"
    );
}

/// Run by `qemu_dies_when_its_parent_is_killed` in a child process: starts a
/// paused VM, prints its pid and waits to be killed.
#[test]
#[ignore = "helper process for qemu_dies_when_its_parent_is_killed"]
fn orphan_helper() {
    let Some(dir) = std::env::var_os(ORPHAN_ENV) else {
        eprintln!("orphan_helper only runs as a child of qemu_dies_when_its_parent_is_killed");
        return;
    };
    // Spawn from a thread that then exits, as a real caller might.
    let vm = std::thread::spawn(move || paused_vm(std::path::Path::new(&dir)))
        .join()
        .unwrap()
        .expect("parent checked the environment");
    println!("QEMU_PID={}", vm.pid());
    std::thread::sleep(Duration::from_secs(60));
    drop(vm);
}

#[test]
fn early_exit_is_reported_with_qemu_stderr() {
    let Some(qemu) = qemu() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("not-a-kernel");
    std::fs::write(&kernel, b"this is not a kernel image").unwrap();
    let mut cfg = tcg_config(&qemu, &kernel, dir.path());
    cfg.extra_args.push("-S".into());
    let started = Instant::now();
    let mut vm = QemuVm::start(cfg).unwrap();
    let mut channel = vm.take_agent_channel().unwrap();
    channel
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        channel.read(&mut buf).unwrap(),
        0,
        "qemu's exit closes the channel"
    );
    let err = vm.boot_failure(started.elapsed());
    let QemuError::Exited { status, report, .. } = &err else {
        panic!("expected Exited, got {err:?}");
    };
    assert!(!status.success());
    assert!(!report.stderr.trim().is_empty(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("exited early") && msg.contains(report.stderr.trim()),
        "{msg}"
    );
    // QMP on a dead QEMU says so, with diagnostics, instead of hanging.
    let qmp = vm.qmp_execute("query-status", None);
    assert!(matches!(qmp, Err(QemuError::Exited { .. })), "{qmp:?}");
}

#[test]
fn missing_kernel_fails_before_spawning() {
    let Some(qemu) = qemu() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = tcg_config(&qemu, &dir.path().join("vmlinuz-missing"), dir.path());
    let err = QemuVm::start(cfg).unwrap_err();
    assert!(matches!(err, QemuError::KernelUnreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("vmlinuz-missing"), "{err}");
}
