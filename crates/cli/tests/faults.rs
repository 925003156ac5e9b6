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

// ---- The image store and snapshots: a full disk, a SIGKILLed nook, and
// two nook processes at once.

/// `nook` with its own `$NOOK_HOME` and runtime directory, booting the
/// test kernel (so nothing is downloaded into that home) without
/// templates.
fn nook_in(home: &Path, runtime: &Path) -> Command {
    let mut c = nook();
    c.env("NOOK_HOME", home)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("NOOK_NO_TEMPLATE", "1");
    for (from, to) in [
        ("NOOK_TEST_KERNEL", "NOOK_KERNEL"),
        ("NOOK_TEST_MODULES", "NOOK_KERNEL_MODULES"),
    ] {
        if let Some(v) = std::env::var_os(from) {
            c.env(to, v);
        }
    }
    c
}

/// Whether guests can boot from a home of their own (the test kernel is
/// given); prints why not.
fn kernel_ready() -> bool {
    if !ready() {
        return false;
    }
    let ok = ["NOOK_TEST_KERNEL", "NOOK_TEST_MODULES"]
        .iter()
        .all(|v| std::env::var_os(v).is_some());
    if !ok {
        eprintln!(
            "skipping: NOOK_TEST_KERNEL and NOOK_TEST_MODULES are not set (see scripts/test)"
        );
    }
    ok
}

/// Names in `dir` that contain `needle`.
fn names_with(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .collect()
}

/// Everything in the image store's `tmp/`.
fn store_tmp(home: &Path) -> Vec<String> {
    names_with(&home.join("images/tmp"), "")
}

/// Fills the file system at `dir` until only `leave` bytes are free.
fn fill_until_free(dir: &Path, leave: u64) {
    let st = rustix::fs::statvfs(dir).unwrap();
    let free = st.f_bavail * st.f_frsize;
    assert!(free > leave, "only {free} bytes free");
    let filler = std::fs::File::create(dir.join("filler")).unwrap();
    rustix::fs::fallocate(
        &filler,
        rustix::fs::FallocateFlags::empty(),
        0,
        free - leave,
    )
    .unwrap();
}

/// The snapshot `name` restores and runs a command.
fn assert_restores(home: &Path, runtime: &Path, name: &str) {
    let out = nook_in(home, runtime)
        .args(["run", "--snapshot", name, "--", "echo", "restored"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "restored\n",
        "snapshot {name} does not restore: {}",
        text(&out.stderr)
    );
}

/// No QEMU of `pid` and no run directory of it in `runtime`.
fn assert_no_vm_left(pid: u32, runtime: &Path) {
    wait_until("qemu goes with nook", Duration::from_secs(10), || {
        qemu_of(pid).is_empty()
    });
    assert_eq!(
        names_with(runtime, &format!("nook-{pid}-")),
        Vec::<String>::new(),
        "run dir left behind"
    );
}

#[test]
fn a_full_disk_fails_snapshot_create_with_a_hint_and_keeps_the_previous_snapshot() {
    if !kernel_ready() {
        return;
    }
    let Some(disk) = SmallDisk::mount(400) else {
        return;
    };
    let home = disk.path();
    let runtime = tempfile::tempdir().unwrap();
    let out = nook_in(home, runtime.path())
        .args(["snapshot", "create", "keep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "first create: {}", text(&out.stderr));
    let snaps = home.join("snapshots");
    let used = nook::Snapshot::open(&snaps.join("keep"))
        .expect("the first snapshot")
        .disk_usage;
    // Room for half of another one.
    fill_until_free(home, used / 2);

    let child = nook_in(home, runtime.path())
        .args(["snapshot", "create", "keep", "--force"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(nook::exit_code::NOOK_FAILED),
        "{stderr}"
    );
    assert!(
        stderr.contains("No space left on device") && stderr.contains(nook::DISK_FULL_HINT),
        "unclear error: {stderr}"
    );
    assert_eq!(names_with(&snaps, ".keep."), Vec::<String>::new());
    assert_no_vm_left(pid, runtime.path());
    // The previous snapshot is whole.
    assert_restores(home, runtime.path(), "keep");
}

#[test]
fn a_sigkilled_snapshot_create_keeps_the_previous_snapshot_and_gc_removes_its_work() {
    if !kernel_ready() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let runtime = tempfile::tempdir().unwrap();
    let snaps = home.join("snapshots");
    let out = nook_in(home, runtime.path())
        .args(["snapshot", "create", "keep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "first create: {}", text(&out.stderr));
    let before = std::fs::read(snaps.join("keep/nook.json")).unwrap();

    // Killed while it writes the replacement.
    let mut child = nook_in(home, runtime.path())
        .args(["snapshot", "create", "keep", "--force"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let partial = format!(".keep.partial-{pid}-");
    wait_until(
        "the new snapshot is being written",
        Duration::from_secs(120),
        || {
            assert!(child.try_wait().unwrap().is_none(), "create ended first");
            !names_with(&snaps, &partial).is_empty()
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("qemu goes with nook", Duration::from_secs(10), || {
        qemu_of(pid).is_empty()
    });

    // The old snapshot is there, whole.
    assert_eq!(std::fs::read(snaps.join("keep/nook.json")).unwrap(), before);
    assert_restores(home, runtime.path(), "keep");
    let out = nook_in(home, runtime.path()).arg("gc").output().unwrap();
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    assert_eq!(names_with(&snaps, ".keep."), Vec::<String>::new());
    assert_no_vm_left(pid, runtime.path());
}

#[test]
fn two_snapshot_creates_of_one_name_end_cleanly_with_one_whole_snapshot() {
    if !kernel_ready() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let runtime = tempfile::tempdir().unwrap();
    let snaps = home.join("snapshots");
    // Without --force one wins and the other is refused; with it both
    // succeed and the later one stays.
    for force in [false, true] {
        let args: &[&str] = if force {
            &["snapshot", "create", "same", "--force"]
        } else {
            &["snapshot", "create", "same"]
        };
        let children: Vec<_> = (0..2)
            .map(|_| {
                nook_in(home, runtime.path())
                    .args(args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        let stderrs: Vec<String> = outs.iter().map(|o| text(&o.stderr)).collect();
        if force {
            assert_eq!(won, 2, "{stderrs:?}");
        } else {
            assert_eq!(won, 1, "{stderrs:?}");
            let lost = outs.iter().find(|o| !o.status.success()).unwrap();
            let msg = text(&lost.stderr);
            assert_eq!(
                lost.status.code(),
                Some(nook::exit_code::NOOK_FAILED),
                "{msg}"
            );
            assert!(
                msg.contains("already exists") || msg.contains("exists: remove it"),
                "unclear refusal: {msg}"
            );
            assert!(msg.contains("--force"), "no way forward: {msg}");
        }
        assert_eq!(names_with(&snaps, ".same."), Vec::<String>::new());
        assert_eq!(names_with(&snaps, ""), ["same"]);
        for pid in pids {
            assert_no_vm_left(pid, runtime.path());
        }
        assert_restores(home, runtime.path(), "same");
    }
}
