//! Lifecycle (issue 9, item 6): volumes in use are locked, damaged
//! snapshots are listed, removable and replaceable, an interrupted
//! `nook snapshot create` leaves nothing half-made, and leftovers of killed
//! runs are removed by the next run and by `nook gc`. Real guests on the
//! qemu engine; names are unique to this test run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{names_with, nook, ready, text};

fn unique(case: &str) -> String {
    format!("t{}-{case}", std::process::id())
}

fn nook_out(args: &[&str]) -> Output {
    nook().args(args).output().expect("run nook")
}

fn home() -> PathBuf {
    nook::default_home()
}

/// Sends `signal` (`-INT`, `-9`) to a process.
fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits for `child` to end within `limit`; kills it and fails otherwise.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first line `child` writes to its (piped) stdout.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// Runs `nook ARGS` when dropped: removes what a test made (a volume, a
/// session) even when it fails half-way.
struct Cleanup(&'static [&'static str], String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = nook_out(&[self.0, &[self.1.as_str()]].concat());
    }
}
const VOLUME_RM: &[&str] = &["volume", "rm"];
const SESSION_RM: &[&str] = &["rm", "-f"];

#[test]
fn a_volume_in_use_is_locked_against_writers_readers_and_rm() {
    if !ready() {
        return;
    }
    let name = unique("locked");
    let _cleanup = Cleanup(VOLUME_RM, name.clone());
    let mount = format!("{name}:/data");
    // The holder: writes, says so, then waits for a line on stdin.
    let mut holder = nook()
        .args(["run", "-v", &mount, "--", "sh", "-c"])
        .arg("echo held > /data/f && echo ready && read x")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(first_line(&mut holder), "ready\n");
    let held_by = format!("volume {name} is in use by nook run (pid {})", holder.id());

    // A second writer, a reader and `volume rm` are refused, naming it.
    for args in [
        vec!["run", "-v", &mount, "--", "true"],
        vec!["run", "-v", &format!("{mount}:ro"), "--", "true"],
        vec!["volume", "rm", &name],
    ] {
        let t0 = Instant::now();
        let out = nook_out(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?} was not refused");
        assert!(
            text(&out.stderr).contains(&held_by),
            "{args:?}: {}",
            text(&out.stderr)
        );
        // Refused before anything boots.
        assert!(t0.elapsed() < Duration::from_secs(5), "{args:?}");
    }

    // Once the holder ended, its data is there and the volume goes.
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = wait_within(&mut holder, Duration::from_secs(60), "the holder");
    assert!(status.success());
    let out = nook_out(&["run", "-v", &format!("{mount}:ro"), "--", "cat", "/data/f"]);
    assert_eq!(text(&out.stdout), "held\n", "{}", text(&out.stderr));
    let out = nook_out(&["volume", "rm", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let volumes = home().join("volumes");
    assert!(!volumes.join(format!("{name}.ext4")).exists());
    assert!(!volumes.join(format!(".{name}.ext4.lock")).exists());
}

/// Writes a snapshot directory whose manifest is garbage.
fn damage(path: &Path) {
    std::fs::create_dir_all(path.join("engine")).unwrap();
    std::fs::write(path.join("nook.json"), b"{ not json").unwrap();
}

#[test]
fn a_damaged_snapshot_is_listed_removed_and_replaced() {
    if !ready() {
        return;
    }
    let name = unique("damaged");
    let path = home().join("snapshots").join(&name);
    damage(&path);

    let out = nook_out(&["snapshot", "ls"]);
    let listed = text(&out.stdout);
    let row = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("not listed:\n{listed}"));
    assert!(row.contains("damaged: nook.json is malformed"), "{row}");
    let out = nook_out(&["snapshot", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .expect("listed in --json");
    assert_eq!(entry["state"], "damaged");
    assert!(entry["reason"].as_str().unwrap().contains("malformed"));

    let out = nook_out(&["snapshot", "rm", &name]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    assert!(!path.exists());

    // `create` replaces a damaged one (no --force needed).
    damage(&path);
    let out = nook_out(&["snapshot", "create", &name]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("replacing damaged snapshot"));
    let out = nook_out(&["run", "--snapshot", &name, "--", "echo", "restored"]);
    assert_eq!(text(&out.stdout), "restored\n", "{}", text(&out.stderr));
    assert!(nook_out(&["snapshot", "rm", &name]).status.success());
}

#[test]
fn sigint_during_snapshot_create_leaves_nothing_behind() {
    if !ready() {
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let snapshots = home().join("snapshots");
    // During the warm-up command, and while the snapshot is being written.
    for (case, warmup) in [("warmup", "sleep 60"), ("writing", "true")] {
        let name = unique(&format!("sigint-{case}"));
        let mut child = nook()
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["snapshot", "create", &name, "--", "sh", "-c", warmup])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let partial = format!(".{name}.partial-");
        let deadline = Instant::now() + Duration::from_secs(120);
        // The moment to interrupt: the warm-up runs (its VM's run dir
        // exists for a while), or the snapshot's temporary directory exists.
        loop {
            let now = match case {
                "warmup" => !names_with(runtime.path(), &format!("nook-{pid}-")).is_empty(),
                _ => !names_with(&snapshots, &partial).is_empty(),
            };
            if now {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "{case}: ended first");
            assert!(Instant::now() < deadline, "{case}: never got there");
            std::thread::sleep(Duration::from_millis(if case == "warmup" {
                100
            } else {
                2
            }));
        }
        if case == "warmup" {
            // Give the warm-up command time to start.
            std::thread::sleep(Duration::from_secs(2));
        }
        kill("-INT", pid);
        let status = wait_within(&mut child, Duration::from_secs(30), "snapshot create");
        let stderr = text(&child.wait_with_output().unwrap().stderr);
        assert_eq!(status.code(), Some(130), "{case}: {stderr}");
        assert!(
            !snapshots.join(&name).exists(),
            "{case}: a snapshot was made"
        );
        assert_eq!(names_with(&snapshots, &partial), Vec::<String>::new());
        assert_eq!(
            names_with(runtime.path(), &format!("nook-{pid}-")),
            Vec::<String>::new(),
            "{case}: its run dir is left"
        );
    }
}

/// A pid no process has now.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Fake leftovers of the process `pid`: a run dir in `runtime` and a
/// scratch disk in `$NOOK_HOME/tmp`.
fn leftovers(runtime: &Path, pid: u32, seq: u32) -> [PathBuf; 2] {
    let run_dir = runtime.join(format!("nook-{pid}-{seq}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::write(run_dir.join("console.log"), b"x").unwrap();
    let tmp = home().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let scratch = tmp.join(format!(".scratch.{pid}.{seq}.tmp"));
    std::fs::write(&scratch, b"x").unwrap();
    [run_dir, scratch]
}

#[test]
fn leftovers_of_dead_processes_go_and_live_ones_stay() {
    if !ready() {
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let mut live = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let kept = leftovers(runtime.path(), live.id(), 0);
    // The live pid's entry last changed long before that process started:
    // it was an earlier owner's (pid reuse), and goes.
    let reused = leftovers(runtime.path(), live.id(), 1);
    for p in &reused {
        std::fs::File::open(p)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .unwrap();
    }
    let dead = dead_pid();
    let gone = leftovers(runtime.path(), dead, 0);

    let out = nook()
        .env("XDG_RUNTIME_DIR", runtime.path())
        .arg("gc")
        .output()
        .unwrap();
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    let said = text(&out.stdout);
    for p in gone.iter().chain(&reused) {
        assert!(!p.exists(), "{} is left", p.display());
    }
    // The run dirs are in this test's own runtime dir: this gc removed
    // them. (Any nook starting meanwhile may remove the scratch disks in
    // the shared $NOOK_HOME first.)
    for p in [&gone[0], &reused[0]] {
        assert!(said.contains(&format!("removed {}", p.display())), "{said}");
    }
    for p in &kept {
        assert!(p.exists(), "{} of a live process was removed", p.display());
    }

    // The next run removes them too.
    let gone = leftovers(runtime.path(), dead, 1);
    let out = nook()
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    for p in &gone {
        assert!(!p.exists(), "{} is left after a run", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} of a live process was removed", p.display());
    }
    let _ = live.kill();
    let _ = live.wait();
    for p in kept.iter().rev() {
        let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
    }
}

#[test]
fn the_run_dir_of_a_killed_nook_is_removed_by_gc() {
    if !ready() {
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let mut child = nook()
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["run", "--", "sh", "-c", "echo up; sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(first_line(&mut child), "up\n");
    let pid = child.id();
    let left = names_with(runtime.path(), &format!("nook-{pid}-"));
    assert_eq!(left.len(), 1, "{left:?}");
    kill("-9", pid);
    child.wait().unwrap();
    assert!(runtime.path().join(&left[0]).exists());
    let out = nook()
        .env("XDG_RUNTIME_DIR", runtime.path())
        .arg("gc")
        .output()
        .unwrap();
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    assert!(
        !runtime.path().join(&left[0]).exists(),
        "the run dir is left"
    );
}

#[test]
fn a_session_holds_its_volumes_for_its_life_and_serves_its_shares() {
    if !ready() {
        return;
    }
    let volume = unique("sessvol");
    let _v = Cleanup(VOLUME_RM, volume.clone());
    let session = unique("holder");
    let _s = Cleanup(SESSION_RM, session.clone());
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("in.txt"), "shared\n").unwrap();
    let mount = format!("{volume}:/data");
    let out = nook_out(&[
        "start",
        "--engine",
        "qemu",
        "--name",
        &session,
        "-v",
        &mount,
        "--share",
        &format!("{}:/host", shared.path().display()),
    ]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let out = nook_out(&[
        "exec",
        &session,
        "--",
        "sh",
        "-c",
        "cat /host/in.txt && echo kept > /data/f",
    ]);
    assert_eq!(text(&out.stdout), "shared\n", "{}", text(&out.stderr));

    let states: Vec<nook_serve::SessionState> =
        serde_json::from_slice(&nook_out(&["ps", "--json"]).stdout).unwrap();
    let host_pid = states
        .iter()
        .find(|s| s.name == session)
        .expect("listed")
        .pid;
    let held_by = format!("volume {volume} is in use by session {session} (pid {host_pid})");
    for args in [
        vec!["run", "-v", &mount, "--", "true"],
        vec!["volume", "rm", &volume],
    ] {
        let out = nook_out(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?} was not refused");
        assert!(
            text(&out.stderr).contains(&held_by),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Stopped, the session lets go; its data is in the volume.
    assert!(nook_out(&["stop", &session]).status.success());
    let out = nook_out(&["run", "-v", &format!("{mount}:ro"), "--", "cat", "/data/f"]);
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    let out = nook_out(&["volume", "rm", &volume]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
