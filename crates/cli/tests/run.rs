//! End-to-end tests of `nook run`: real guests on the qemu engine.
//!
//! Each test boots a microVM (about 3 s under TCG here). They need the
//! guest agent and kernel assets that `scripts/setup` prepares; without
//! them each test prints why and skips.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{nook, qemu_of, ready, spawn, text};

fn run(args: &[&str]) -> Output {
    nook()
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nook")
}

/// Waits until the nook process `pid` has started its QEMU.
fn wait_for_qemu(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu_of(pid).is_empty() {
        assert!(Instant::now() < deadline, "qemu never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_qemu_left(pid: u32) {
    // Reaping by the kernel after SIGKILL is quick but not instant.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = qemu_of(pid);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "qemu outlived nook: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn prints_the_guest_kernel_release() {
    if !ready() {
        return;
    }
    let out = run(&["--", "uname", "-r"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let guest = text(&out.stdout).trim().to_string();
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string();
    assert!(!guest.is_empty());
    assert_ne!(guest, host, "the command ran on the host, not in the guest");
    // Debian's cloud kernel is what nook boots by default.
    assert!(
        guest.contains("cloud-amd64") || std::env::var_os("NOOK_KERNEL").is_some(),
        "{guest}"
    );
}

#[test]
fn exit_code_is_the_guest_commands() {
    if !ready() {
        return;
    }
    let out = run(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
}

#[test]
fn stdout_and_stderr_stay_apart() {
    if !ready() {
        return;
    }
    let out = run(&["--", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn stdin_is_forwarded_byte_for_byte() {
    if !ready() {
        return;
    }
    let mut child = spawn(&["run", "--", "cat"], Stdio::piped());
    child.stdin.take().unwrap().write_all(b"abc").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "abc", "stderr: {}", text(&out.stderr));

    // 3 MB of random bytes through sha256sum in the guest.
    let data: Vec<u8> = {
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        let mut v = vec![0u8; 3_000_000];
        std::io::Read::read_exact(&mut f, &mut v).unwrap();
        v
    };
    let mut child = spawn(&["run", "--", "sha256sum"], Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).map(|_| data));
    let out = child.wait_with_output().unwrap();
    let data = writer.join().unwrap().unwrap();
    let mut host = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    host.stdin.take().unwrap().write_all(&data).unwrap();
    let host = host.wait_with_output().unwrap();
    let guest_sum = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let host_sum = text(&host.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(guest_sum, host_sum, "stderr: {}", text(&out.stderr));
}

#[test]
fn env_and_workdir() {
    if !ready() {
        return;
    }
    let out = run(&[
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $FOO; pwd",
    ]);
    assert_eq!(
        text(&out.stdout),
        "bar\n/tmp\n",
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn missing_command_exits_127_with_a_clear_error() {
    if !ready() {
        return;
    }
    let out = run(&["--", "/no/such/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.contains("/no/such/cmd") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn timeout_kills_the_command_and_leaves_no_qemu() {
    if !ready() {
        return;
    }
    let t0 = Instant::now();
    let child = nook()
        .args(["run", "--timeout", "3", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("timed out"));
    assert_no_qemu_left(pid);
}

#[test]
fn sigint_stops_the_vm() {
    if !ready() {
        return;
    }
    let mut child = nook()
        .args(["run", "--", "sh", "-c", "echo started; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the command runs in the guest, then interrupt nook.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    assert!(
        !qemu_of(pid).is_empty(),
        "the VM runs in qemu while the command runs"
    );
    let t0 = Instant::now();
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    assert_no_qemu_left(pid);
}

#[test]
fn sigint_during_boot_leaves_no_qemu() {
    if !ready() {
        return;
    }
    // A boot, not a template restore: the signal must land mid-boot.
    let mut child = nook()
        .args(["run", "--no-template", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_qemu(pid);
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_no_qemu_left(pid);
}

#[test]
fn sigkill_of_nook_takes_qemu_down() {
    if !ready() {
        return;
    }
    let mut child = nook()
        .args(["run", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_qemu(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_no_qemu_left(pid);
}

#[test]
fn second_setup_downloads_and_builds_nothing() {
    if !ready() {
        return;
    }
    let json = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("setup --json prints JSON")
    };
    let _first = json(nook().args(["setup", "--json"]).output().unwrap());
    let second = json(nook().args(["setup", "--json"]).output().unwrap());
    assert_eq!(second["downloaded"], false);
    assert_eq!(second["built_initramfs"], false);
    println!("second prepare took {} ms", second["assets_ms"]);
}

#[test]
fn second_run_downloads_and_builds_nothing() {
    if !ready() {
        return;
    }
    let run_logged = || {
        let out = nook()
            .env("NOOK_LOG", "debug")
            .args(["run", "--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let _ = run_logged();
    let log = run_logged();
    let line = log
        .lines()
        .find(|l| l.contains("assets ready"))
        .unwrap_or_else(|| panic!("no assets line in {log}"));
    assert!(
        line.contains("downloaded=false") && line.contains("built_initramfs=false"),
        "{line}"
    );
    println!("{line}");
}

#[test]
fn numeric_options_out_of_range_are_usage_errors_naming_the_range() {
    let beyond_ram = (nook::memory_limit_mib() + 1).to_string();
    for (args, says) in [
        (vec!["--timeout", "inf"], "greater than 0"),
        (vec!["--timeout", "nan"], "greater than 0"),
        (vec!["--timeout", "0"], "greater than 0"),
        (vec!["--timeout", "-1"], "greater than 0"),
        (vec!["--cpus", "0"], "1 to 255"),
        (vec!["--cpus", "65"], "the most the kvm engine supports"),
        (vec!["--engine", "kvm", "--cpus", "65"], "between 1 and 64"),
        (vec!["--memory", &beyond_ram], "this host's RAM"),
        (vec!["--memory", "32"], "between 64 MiB"),
        (vec!["--boot-timeout", "0"], "1 to"),
    ] {
        let out = nook()
            .arg("run")
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
