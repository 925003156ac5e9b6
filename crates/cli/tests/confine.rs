//! End-to-end checks that nook's host side runs hardened (docs/security.md):
//! a session host under its seccomp deny-list with no core files and
//! bounded open files; its QEMU without capabilities, with no new
//! privileges and the same limits; its virtio-fs threads filtered and
//! confined; the daemon under its filter; and `--no-seccomp --no-confine`
//! turning all of it off. Real guests on the qemu engine.

use std::path::Path;

mod common;
use common::daemon::Daemon;
use common::{nook, qemu_of, ready, text};

fn unique(case: &str) -> String {
    format!("t{}-{case}", std::process::id())
}

/// Removes the session even when a test fails half-way.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = nook().args(["rm", "-f", &self.0]).output();
    }
}

/// Starts session `name` on the qemu engine with `args`; returns the
/// session host's pid.
fn start(name: &str, args: &[&str]) -> u32 {
    let out = nook()
        .args([&["start", "--engine", "qemu", "--name", name], args].concat())
        .output()
        .unwrap();
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let out = nook().args(["ps", "-a", "--json"]).output().unwrap();
    let all: Vec<nook_serve::SessionState> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .find(|s| s.name == name)
        .expect("listed")
        .pid
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// `Max core file size` and `Max open files` (soft) of a process.
fn limits(pid: &str) -> (String, u64) {
    let text = read(format!("/proc/{pid}/limits"));
    let soft = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_owned()
    };
    let files = soft("Max open files").parse().unwrap_or(u64::MAX);
    (soft("Max core file size"), files)
}

/// (thread name, status) of every thread of `pid` whose name starts
/// with `prefix`.
fn threads(pid: u32, prefix: &str) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let comm = comm.trim_end().to_owned();
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            comm.starts_with(prefix).then_some((comm, status))
        })
        .collect()
}

/// The pid and `/proc` status of the QEMU of session host `host`.
fn qemu_status(host: u32) -> (String, String) {
    let vm = qemu_of(host);
    let line = vm.first().expect("a QEMU");
    let pid = line.split(':').next().unwrap_or_default().to_owned();
    let status = read(format!("/proc/{pid}/status"));
    (pid, status)
}

fn root() -> bool {
    field(&read("/proc/self/status"), "Uid:").starts_with("0\t")
}

#[test]
fn a_session_host_its_qemu_and_its_share_server_run_hardened() {
    if !ready() {
        return;
    }
    let name = unique("hard");
    let _c = Cleanup(name.clone());
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"shared\n").unwrap();
    let spec = format!("{}:/mnt/s", share.path().display());
    let host = start(&name, &["--share", &spec]);
    // Reading the share starts the queue worker.
    let out = nook()
        .args(["exec", &name, "--", "cat", "/mnt/s/f"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "shared\n", "{}", text(&out.stderr));

    let status = read(format!("/proc/{host}/status"));
    assert_eq!(field(&status, "Seccomp:"), "2", "session host: {status}");
    let (core, files) = limits(&host.to_string());
    assert_eq!(core, "0", "session host core limit");
    assert!(files <= nook_seccomp::MAX_OPEN_FILES, "{files}");

    let (qemu, status) = qemu_status(host);
    assert_eq!(
        field(&status, "CapEff:"),
        "0000000000000000",
        "qemu: {status}"
    );
    assert_eq!(
        field(&status, "CapPrm:"),
        "0000000000000000",
        "qemu: {status}"
    );
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "qemu: {status}");
    assert_eq!(limits(&qemu).0, "0", "qemu core limit");

    let fs = threads(host, "nook-fs-");
    assert!(
        fs.iter().any(|(n, _)| n.ends_with("-q")),
        "no queue worker: {fs:?}"
    );
    assert!(
        fs.iter().any(|(n, _)| !n.ends_with("-q")),
        "no protocol thread: {fs:?}"
    );
    let file_server: u64 = nook_seccomp::FILE_SERVER_CAPS
        .iter()
        .map(|c| c.bitmask())
        .sum();
    for (n, s) in &fs {
        assert_eq!(field(s, "Seccomp:"), "2", "{n}: {s}");
        assert_eq!(field(s, "NoNewPrivs:"), "1", "{n}: {s}");
        let eff = u64::from_str_radix(&field(s, "CapEff:"), 16).unwrap();
        let allowed = if n.ends_with("-q") { file_server } else { 0 };
        assert_eq!(eff & !allowed, 0, "{n}: {s}");
    }
    assert!(nook()
        .args(["rm", "-f", &name])
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn the_daemon_runs_under_its_filter_and_limits() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start(&[]);
    let pid = d.child.id().to_string();
    let status = read(format!("/proc/{pid}/status"));
    assert_eq!(field(&status, "Seccomp:"), "2", "daemon: {status}");
    assert_eq!(limits(&pid).0, "0", "daemon core limit");
    assert!(d.terminate().success(), "{}", d.log_text());
}

#[test]
fn no_seccomp_and_no_confine_turn_the_hardening_off() {
    if !ready() {
        return;
    }
    let name = unique("soft");
    let _c = Cleanup(name.clone());
    let host = start(&name, &["--no-seccomp", "--no-confine"]);
    let status = read(format!("/proc/{host}/status"));
    assert_eq!(field(&status, "Seccomp:"), "0", "session host: {status}");
    if root() {
        let (_, status) = qemu_status(host);
        assert_ne!(
            field(&status, "CapEff:"),
            "0000000000000000",
            "qemu: {status}"
        );
    }
    assert!(nook()
        .args(["rm", "-f", &name])
        .output()
        .unwrap()
        .status
        .success());
}
