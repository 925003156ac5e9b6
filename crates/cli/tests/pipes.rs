//! `nook run`'s stdio behaves like a shell pipeline: flow control end to
//! end (a slow reader slows the guest command instead of filling nook's
//! memory; a late reader in the guest still gets every byte of stdin), a
//! closed stdout ends the command as SIGPIPE would, and a failing stdout
//! is reported. Real guests on the qemu engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{nook, ready, spawn, text};

/// Peak resident memory of process `pid` (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_closed_stdout_ends_the_command_as_sigpipe_would() {
    if !ready() {
        return;
    }
    // `nook run -- yes | head -n 1`
    let mut child = spawn(&["run", "--", "yes"], Stdio::null());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "y\n");
    let t0 = Instant::now();
    drop(out);
    let status = child.wait().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "nook took {:?} to end after its reader went away",
        t0.elapsed()
    );
    // yes died of SIGPIPE in the guest: 128 + 13.
    assert_eq!(status.code(), Some(141));
}

#[test]
fn a_failing_stdout_is_reported_and_exits_non_zero() {
    if !ready() {
        return;
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = nook()
        .args(["run", "--", "sh", "-c", "echo hi"])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert!(
        err.contains("cannot write") && err.contains("No space left on device"),
        "{err}"
    );
}

#[test]
fn a_sleeping_reader_keeps_nook_small() {
    if !ready() {
        return;
    }
    // `nook run --timeout 30 -- cat /dev/zero | (sleep 35; wc -c)`
    let mut child = spawn(
        &["run", "--timeout", "30", "--", "cat", "/dev/zero"],
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_secs(35));
    let peak = peak_rss_kib(child.id());
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf).unwrap() {
            0 => break,
            n => total += n as u64,
        }
    }
    let out = child.wait_with_output().unwrap();
    println!("nook's peak RSS {peak} KiB; {total} bytes read after the sleep");
    assert!(peak < 64 * 1024, "nook grew to {peak} KiB");
    assert!(total > 0);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
}

#[test]
fn a_late_reader_in_the_guest_gets_all_of_300_mb_of_stdin() {
    if !ready() {
        return;
    }
    // `head -c 300000000 /dev/zero | nook run -- sh -c 'sleep 5; cat | wc -c'`
    const TOTAL: usize = 300_000_000;
    let mut child = spawn(
        &["run", "--", "sh", "-c", "sleep 5; cat | wc -c"],
        Stdio::piped(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut left = TOTAL;
        while left > 0 {
            let n = left.min(chunk.len());
            stdin.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok::<_, std::io::Error>(())
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        TOTAL.to_string(),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}
