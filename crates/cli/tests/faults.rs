//! The fault table (docs/security.md), rows that need the CLI: a part
//! dies or the disk fills, and afterwards nothing is lost and nothing is
//! left behind (no QEMU, no run directory, earlier data intact).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The run directories (`nook-PID-N`) nook process `pid` made.
fn run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let prefix = format!("nook-{pid}-");
    std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < end, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// QEMU's pids among `qemu_of`'s lines.
fn qemu_pids(pid: u32) -> Vec<i32> {
    qemu_of(pid)
        .iter()
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

#[test]
fn a_vm_killed_mid_exec_ends_nook_with_125_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let mut child = nook()
        .args([
            "run",
            "--no-template",
            "--",
            "sh",
            "-c",
            "echo started; sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let qemu = qemu_pids(pid);
    assert_eq!(qemu.len(), 1, "{:?}", qemu_of(pid));
    let killed_at = Instant::now();
    Command::new("kill")
        .args(["-KILL", &qemu[0].to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let took = killed_at.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(125), "stderr: {stderr}");
    assert!(
        took < Duration::from_secs(10),
        "nook took {took:?} to notice"
    );
    assert!(!stderr.is_empty(), "nook says nothing about the lost VM");
    assert!(qemu_of(pid).is_empty());
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "run dir left behind"
    );
}

#[test]
fn a_killed_nook_leaves_no_qemu_and_the_next_nook_removes_its_run_dir() {
    if !ready() {
        return;
    }
    let mut child = nook()
        .args(["run", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("qemu starts", Duration::from_secs(30), || {
        !qemu_of(pid).is_empty()
    });
    assert!(!run_dirs_of(pid).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("qemu goes with nook", Duration::from_secs(5), || {
        qemu_of(pid).is_empty()
    });
    let out = nook().args(["run", "--", "true"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "run dir left behind"
    );
}

/// A tmpfs of `mib` MiB mounted on a new directory; unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "nook-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_host_disk_fails_a_volume_write_in_the_guest_and_keeps_earlier_data() {
    if !ready() {
        return;
    }
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    // A 256 MiB ext4 volume, sparse, on 24 MiB of host space.
    let img = disk.path().join("vol.ext4");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{}", text(&mkfs.stderr));
    let vol = format!("{}:/data", img.display());

    let out = nook()
        .args([
            "run",
            "-v",
            &vol,
            "--",
            "sh",
            "-c",
            "echo keep > /data/keep && sync",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // 64 MiB cannot fit: the guest sees an I/O error instead of the VM
    // stopping, and nook ends in bounded time.
    let t0 = Instant::now();
    let out = nook()
        .args(["run", "--timeout", "120", "-v", &vol, "--", "sh", "-c"])
        .arg("dd if=/dev/zero of=/data/big bs=1M count=64 conv=fsync 2>/dev/null; echo dd=$?; sync; echo synced")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(t0.elapsed() < Duration::from_secs(110), "the guest stalled");
    assert!(
        stdout.contains("dd=") && !stdout.contains("dd=0"),
        "the write did not fail: {stdout} {}",
        text(&out.stderr)
    );

    // The earlier file survives (the file system may need its journal).
    let out = nook()
        .args(["run", "-v", &vol, "--", "cat", "/data/keep"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "keep\n", "stderr: {}", text(&out.stderr));
}
