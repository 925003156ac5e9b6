//! The fault table (docs/security.md), rows that need the CLI: a part
//! dies or the disk fills, and afterwards nothing is lost and nothing is
//! left behind (no QEMU, no run directory, earlier data intact).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nook_image::testing::{LayerBuilder, Registry, TestImage, TestLayer};

/// The run directories (`nook-PID-N`) nook process `pid` made.
fn run_dirs_of(pid: u32) -> Vec<String> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    names_with(&base, &format!("nook-{pid}-"))
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
        Vec::<String>::new(),
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
        Vec::<String>::new(),
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

/// `n` bytes no compressor shrinks (xorshift; the same for a `seed`).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An image of one uncompressed layer holding `mib` MiB of noise.
fn noise_image(mib: usize, seed: u64) -> TestImage {
    let layer = LayerBuilder::new()
        .file("noise", &noise(mib << 20, seed), 0o644)
        .tar();
    TestImage::new(vec![TestLayer::plain(layer)], "amd64")
}

/// The references `nook images --json` lists in `home`.
fn listed_images(home: &Path) -> Vec<String> {
    let out = nook()
        .env("NOOK_HOME", home)
        .args(["images", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("images --json");
    list.as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["references"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

fn pull_in(home: &Path, reference: &str) -> std::process::Output {
    nook()
        .env("NOOK_HOME", home)
        .args(["pull", reference])
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_fails_pull_with_a_hint_leaves_no_temp_files_and_keeps_other_images() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let anon = oci_client::secrets::RegistryAuth::Anonymous;
    registry.push("small:1", &noise_image(1, 1), &anon);
    registry.push("big:1", &noise_image(12, 2), &anon);
    let small = format!("{}/small:1", registry.host);
    let big = format!("{}/big:1", registry.host);
    // Full while the layer downloads (8 MiB), and while its tree unpacks
    // (20 MiB: the 12 MiB blob fits, its files do not).
    for mib in [8, 20] {
        let Some(disk) = SmallDisk::mount(mib) else {
            return;
        };
        let home = disk.path();
        let out = pull_in(home, &small);
        assert!(out.status.success(), "{}", text(&out.stderr));

        let out = pull_in(home, &big);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(nook::exit_code::NOOK_FAILED),
            "{mib} MiB: {stderr}"
        );
        assert!(
            stderr.contains("No space left on device") && stderr.contains(nook::DISK_FULL_HINT),
            "{mib} MiB: unclear error: {stderr}"
        );
        assert!(
            !stderr.contains("check the image name, the network") && !stderr.contains("corrupt"),
            "{mib} MiB: blames the registry or the image: {stderr}"
        );
        assert_eq!(store_tmp(home), Vec::<String>::new(), "{mib} MiB");
        assert_eq!(
            listed_images(home),
            std::slice::from_ref(&small),
            "{mib} MiB"
        );
        let kept = nook_image::ImageStore::open(&home.join("images"))
            .and_then(|s| s.get(&small))
            .unwrap()
            .expect("the earlier image");
        assert_eq!(std::fs::metadata(&kept.rootfs).unwrap().len(), kept.size);

        // With room again the pull succeeds.
        let grown = Command::new("mount")
            .args(["-o", "remount,size=96m"])
            .arg(home)
            .status()
            .unwrap();
        assert!(grown.success());
        let out = pull_in(home, &big);
        assert!(out.status.success(), "{mib} MiB: {}", text(&out.stderr));
        assert_eq!(store_tmp(home), Vec::<String>::new());
    }
}

/// A TCP proxy on loopback in front of `upstream` that, while `slow` is
/// set, passes replies on at about 1 MiB/s.
fn throttled_proxy(upstream: String, slow: Arc<AtomicBool>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
            let (mut s_in, mut c_out) = (server, client);
            let slow = slow.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                loop {
                    let n = match std::io::Read::read(&mut s_in, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if std::io::Write::write_all(&mut c_out, &buf[..n]).is_err() {
                        break;
                    }
                    if slow.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(16));
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// The largest file in the image store's `tmp/`.
fn largest_tmp_file(home: &Path) -> u64 {
    std::fs::read_dir(home.join("images/tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_sigkilled_pull_leaves_nothing_that_looks_complete_and_the_next_pull_and_gc_clean_up() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let image = noise_image(16, 3);
    registry.push(
        "slow:1",
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let slow = Arc::new(AtomicBool::new(true));
    let proxy = throttled_proxy(registry.host.clone(), slow.clone());
    let reference = format!("{proxy}/slow:1");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();

    let mut child = nook()
        .env("NOOK_HOME", home)
        .args(["pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the layer is being written",
        Duration::from_secs(60),
        || {
            assert!(child.try_wait().unwrap().is_none(), "pull ended first");
            largest_tmp_file(home) > 1 << 20
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(
        store_tmp(home),
        Vec::<String>::new(),
        "killed after the end"
    );
    assert_eq!(listed_images(home), Vec::<String>::new());

    slow.store(false, Ordering::Relaxed);
    let out = pull_in(home, &reference);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&image.digest().to_string()),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(listed_images(home), std::slice::from_ref(&reference));
    let runtime = tempfile::tempdir().unwrap();
    let out = nook()
        .env("NOOK_HOME", home)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["image", "gc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    assert_eq!(store_tmp(home), Vec::<String>::new());
    assert_eq!(listed_images(home), [reference]);
}

/// Removes a session when dropped, even when a test fails half-way.
struct SessionCleanup(String);

impl Drop for SessionCleanup {
    fn drop(&mut self) {
        let _ = nook().args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn the_agent_shrugs_off_signals_from_root_in_the_guest_and_serves_the_next_exec() {
    if !ready() {
        return;
    }
    let name = format!("t{}-agent-kill", std::process::id());
    let _cleanup = SessionCleanup(name.clone());
    let out = nook().args(["start", "--name", &name]).output().unwrap();
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    // PID 1's start time (field 22 of its stat): the same process after.
    let started = || {
        let out = nook()
            .args([
                "exec",
                &name,
                "--",
                "sh",
                "-c",
                "cut -d' ' -f22 /proc/1/stat",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "exec: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let before = started();
    // As root, every signal the agent could get, SIGKILL last.
    let out = nook()
        .args(["exec", &name, "--", "sh", "-c"])
        .arg("id -u; for s in TERM INT HUP QUIT USR1 PIPE KILL; do kill -$s 1; done; sleep 1; echo sent")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "0\nsent\n", "{}", text(&out.stderr));
    assert_eq!(started(), before, "PID 1 is another process");
}

/// Processes whose command line mentions `needle`, or whose root or
/// working directory is under it (apt and dpkg chrooted into a build).
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = text(&cmdline).replace('\0', " ");
            let inside = ["root", "cwd"].iter().any(|l| {
                std::fs::read_link(e.path().join(l))
                    .is_ok_and(|p| p.to_string_lossy().starts_with(needle))
            });
            (inside || cmdline.contains(needle))
                .then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Slow (a Debian build downloads and installs packages for minutes):
/// opt in with NOOK_SLOW_TESTS=1.
#[test]
fn a_sigkilled_image_build_leaves_no_process_mount_or_image_and_the_next_build_works() {
    if std::env::var("NOOK_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping: slow, set NOOK_SLOW_TESTS=1 to run it");
        return;
    }
    if !have_mmdebstrap() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let runtime = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let mut c = nook();
        c.env("NOOK_HOME", home)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["image", "build", name, "--debian", "bookworm"]);
        c
    };
    let mut child = build("killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The build writes under the store's tmp/ (mmdebstrap's output).
    let store_tmp_dir = home.join("images/tmp");
    wait_until("the build writes", Duration::from_secs(300), || {
        assert!(child.try_wait().unwrap().is_none(), "build ended first");
        processes_with(&store_tmp_dir.to_string_lossy())
            .iter()
            .any(|p| p.contains("mmdebstrap"))
            && largest_tmp_tree(&store_tmp_dir) > 0
    });
    std::thread::sleep(Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    // mmdebstrap and everything it started (apt, dpkg) go with nook.
    wait_until("mmdebstrap goes with nook", Duration::from_secs(20), || {
        processes_with(&store_tmp_dir.to_string_lossy()).is_empty()
    });
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*store_tmp_dir.to_string_lossy()),
        "mounts left: {mounts}"
    );
    assert_eq!(listed_images(home), Vec::<String>::new());
    let out = nook()
        .env("NOOK_HOME", home)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["image", "gc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    assert_eq!(store_tmp(home), Vec::<String>::new());

    let out = build("again").output().unwrap();
    assert!(out.status.success(), "next build: {}", text(&out.stderr));
    assert_eq!(listed_images(home), ["again"]);
    assert_eq!(store_tmp(home), Vec::<String>::new());
}

/// Bytes under `dir` (files only, best effort).
fn largest_tmp_tree(dir: &Path) -> u64 {
    fn size(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| size(&e.path()))
                .sum(),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    size(dir)
}
