//! Every guest ending is seen within seconds and named with what the
//! console showed: a reboot, a power-off, a kernel panic, a hang under
//! `--timeout`; and a guest that cannot boot is reported with the engine's
//! own words. Real guests on the qemu engine.

use std::io::{BufRead, BufReader, Read};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{nook, ready, spawn, text};

/// Runs `sh -c SCRIPT` in a fresh guest (booted, not restored from a
/// template) after printing `go` (and giving it a second to reach the
/// host); returns nook's output and how long it took from `go` to nook's
/// exit.
fn after_go(script: &str, extra: &[&str]) -> (Output, Duration) {
    let script = format!("echo go; sleep 1; {script}");
    let mut args = vec!["run", "--no-template"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let mut child = spawn(&args, Stdio::null());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert_eq!(line, "go\n", "stderr: {}", text(&out.stderr));
    out.stdout = rest;
    (out, took)
}

#[test]
fn thirty_guest_reboots_in_a_row_each_end_within_10_s() {
    if !ready() {
        return;
    }
    for i in 0..30 {
        let (out, took) = after_go("reboot -f", &[]);
        let err = text(&out.stderr);
        assert!(
            took < Duration::from_secs(10),
            "reboot {i} took {took:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(125), "reboot {i}: {err}");
        assert!(err.contains("the guest rebooted"), "reboot {i}: {err}");
        assert!(err.contains("reboot: Restarting system"), "{err}");
    }
}

#[test]
fn a_power_off_is_named() {
    if !ready() {
        return;
    }
    let (out, took) = after_go("poweroff -f", &[]);
    let err = text(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("the guest powered off"), "{err}");
}

#[test]
fn a_kernel_panic_is_named_with_its_message() {
    if !ready() {
        return;
    }
    let (out, took) = after_go("echo c > /proc/sysrq-trigger", &[]);
    let err = text(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(
            "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
        ),
        "{err}"
    );
    assert!(
        err.contains("--- last lines of the guest console ---"),
        "{err}"
    );
}

#[test]
fn a_hung_guest_under_timeout_is_reported_within_seconds() {
    if !ready() {
        return;
    }
    // Suspend-to-idle with no wake-up source: the whole guest, agent
    // included, stops, so its own timeout cannot fire.
    let (out, took) = after_go("echo freeze > /sys/power/state", &["--timeout", "2"]);
    let err = text(&out.stderr);
    assert!(took < Duration::from_secs(20), "took {took:?}: {err}");
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("the guest seems hung"), "{err}");
    assert!(
        err.contains("--- last lines of the guest console ---"),
        "{err}"
    );
}

#[test]
fn a_boot_failure_carries_the_engines_own_words() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("not-a-kernel");
    std::fs::write(&kernel, vec![0x5au8; 64 * 1024]).unwrap();
    let out = nook()
        .args(["run", "--no-template", "--kernel"])
        .arg(&kernel)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("qemu exited"), "{err}");
    // QEMU's own complaint about the kernel, from its stderr.
    let own = err
        .split("--- the engine's own output ---\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no engine output in: {err}"));
    assert!(own.contains("kernel"), "{err}");
}
