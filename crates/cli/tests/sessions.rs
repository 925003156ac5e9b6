//! End-to-end tests of sessions (`nook start/exec/ps/stop/rm`): real guests
//! on the qemu engine, each session under a name unique to this test run.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{nook, qemu_of, ready, text};

use nook_serve::{SessionClient, SessionPhase, SessionState};

fn unique(case: &str) -> String {
    format!("t{}-{case}", std::process::id())
}

fn nook_out(args: &[&str]) -> Output {
    nook().args(args).output().expect("run nook")
}

/// Starts session `name` on the qemu engine with extra `args`.
fn start(name: &str, args: &[&str]) {
    let out = nook_out(&[&["start", "--engine", "qemu", "--name", name], args].concat());
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), name);
}

fn exec(name: &str, cmd: &[&str]) -> Output {
    nook_out(&[&["exec", name, "--"], cmd].concat())
}

/// Session `name` as `nook ps -a --json` shows it.
fn ps(name: &str) -> Option<SessionState> {
    let out = nook_out(&["ps", "-a", "--json"]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    let all: Vec<SessionState> = serde_json::from_slice(&out.stdout).expect("ps --json");
    all.into_iter().find(|s| s.name == name)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the session even when a test fails half-way.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = nook_out(&["rm", "-f", &self.0]);
    }
}

/// Sends `signal` (`-9`, `-INT`) to a host process.
fn kill(signal: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

fn guest_has_pid(name: &str, pid: u32) -> bool {
    let out = exec(name, &["sh", "-c", &format!("test -d /proc/{pid}")]);
    out.status.success()
}

#[test]
fn start_exec_ps_stop() {
    if !ready() {
        return;
    }
    let name = unique("basic");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let out = exec(&name, &["sh", "-c", "echo hi > /tmp/f"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = exec(&name, &["cat", "/tmp/f"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    // run's exit-code and stdio behaviour.
    assert_eq!(exec(&name, &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(exec(&name, &["no-such-program"]).status.code(), Some(127));
    let out = exec(&name, &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );
    let mut child = nook()
        .args(["exec", &name, "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    assert_eq!(text(&child.wait_with_output().unwrap().stdout), "PIPED\n");

    let st = ps(&name).expect("listed");
    assert_eq!(st.state, SessionPhase::Running);
    assert_eq!(st.memory_mib, 256);
    assert!(st.engine.starts_with("qemu"), "{}", st.engine);
    assert!(!qemu_of(st.pid).is_empty(), "no VM process for the session");

    let out = nook_out(&["stop", &name]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert!(qemu_of(st.pid).is_empty(), "a VM process outlived stop");
    let after = ps(&name).expect("still listed with -a");
    assert_eq!(after.state, SessionPhase::Exited);
    assert_eq!(after.exit_reason.as_deref(), Some("stopped"));
    let out = nook_out(&["ps", "--json"]);
    assert!(
        !text(&out.stdout).contains(&name),
        "plain ps lists exited sessions"
    );
    assert!(nook_out(&["rm", &name]).status.success());
    assert!(ps(&name).is_none(), "rm left the session");
}

#[test]
fn a_killed_vm_shows_as_exited() {
    if !ready() {
        return;
    }
    let name = unique("killed");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let st = ps(&name).expect("listed");
    let vm = qemu_of(st.pid);
    let vm_pid: i32 = vm
        .first()
        .and_then(|l| l.split(':').next())
        .and_then(|p| p.parse().ok())
        .expect("the session's VM process");
    kill("-9", &vm_pid.to_string());
    wait_until(
        "ps shows the session exited",
        Duration::from_secs(10),
        || ps(&name).is_some_and(|s| s.state == SessionPhase::Exited),
    );
    let reason = ps(&name).and_then(|s| s.exit_reason).unwrap_or_default();
    assert!(reason.contains("VM died"), "{reason}");
    wait_until("the host process ends", Duration::from_secs(5), || {
        !nook_serve::host_alive(st.pid)
    });
    assert_ne!(exec(&name, &["true"]).status.code(), Some(0));
}

#[test]
fn a_killed_host_process_shows_as_exited_and_takes_its_vm() {
    if !ready() {
        return;
    }
    let name = unique("host");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let st = ps(&name).expect("listed");
    kill("-9", &st.pid.to_string());
    wait_until(
        "ps shows the session exited",
        Duration::from_secs(5),
        || ps(&name).is_some_and(|s| s.state == SessionPhase::Exited),
    );
    wait_until("its VM is gone", Duration::from_secs(5), || {
        qemu_of(st.pid).is_empty()
    });
    assert!(nook_out(&["rm", &name]).status.success());
}

#[test]
fn idle_timeout_stops_a_session() {
    if !ready() {
        return;
    }
    let name = unique("idle");
    let _c = Cleanup(name.clone());
    start(&name, &["--idle-timeout", "5"]);
    let t0 = Instant::now();
    assert!(exec(&name, &["true"]).status.success());
    wait_until("the idle session stops", Duration::from_secs(30), || {
        ps(&name).is_some_and(|s| s.state == SessionPhase::Exited)
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "stopped before its idle timeout"
    );
    let reason = ps(&name).and_then(|s| s.exit_reason).unwrap_or_default();
    assert!(reason.contains("idle timeout"), "{reason}");
}

#[test]
fn detached_process_survives_the_cli_and_a_library_signal_ends_it() {
    if !ready() {
        return;
    }
    let name = unique("detach");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let out = nook_out(&["exec", "-d", &name, "--", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid: u32 = text(&out.stdout).trim().parse().expect("a pid");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        guest_has_pid(&name, pid),
        "the background process died with the CLI"
    );
    let home = nook::default_home();
    let client = SessionClient::open(&home, &name).unwrap();
    client.signal(pid, 15).unwrap();
    wait_until(
        "the signalled process ends",
        Duration::from_secs(10),
        || !guest_has_pid(&name, pid),
    );
    assert!(
        client.signal(pid, 15).is_err(),
        "an ended process still takes signals"
    );
}

#[test]
fn sigint_to_exec_ends_the_guest_command() {
    if !ready() {
        return;
    }
    let name = unique("sigint");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let mut child = nook()
        .args([
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 1000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    kill("-INT", &child.id().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "nook exec ignored SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The guest command died of SIGINT: 128 + 2, as `nook run` reports.
    assert_eq!(status.code(), Some(130));
    let out = exec(&name, &["sh", "-c", "ps | grep -c '[s]leep 1000'"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "0",
        "the guest command survived Ctrl-C"
    );
}

#[test]
fn exec_stdio_behaves_like_a_shell_pipeline() {
    if !ready() {
        return;
    }
    let name = unique("pipes");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    // `nook exec S -- yes | head -n 1`: the closed stdout ends the command
    // as SIGPIPE would, and nook with it.
    let mut child = nook()
        .args(["exec", &name, "--", "yes"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "y\n");
    let t0 = Instant::now();
    drop(out);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "nook exec did not end within 5 s of its reader going away"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(141));
    // `nook exec S -- echo hi > /dev/full`: reported, non-zero.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = nook()
        .args(["exec", &name, "--", "echo", "hi"])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot write the command's stdout") && stderr.contains("No space left"),
        "{stderr}"
    );
}

/// `sha256sum` of a host file.
fn host_sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every entry below `root` with its kind, mode, and content or link target.
fn tree_listing(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.permissions().mode() & 0o7777)
            } else {
                format!(
                    "file {:o} {}",
                    m.permissions().mode() & 0o7777,
                    host_sha256(&p)
                )
            };
            out.push(format!("{rel}: {what}"));
        }
    }
    out.sort();
    out
}

#[test]
fn cp_round_trips_a_large_file_and_a_tree() {
    use std::os::unix::fs::PermissionsExt;
    if !ready() {
        return;
    }
    let name = unique("cp");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let tmp = tempfile::tempdir().unwrap();
    // 50 MiB that do not compress.
    let big = tmp.path().join("big");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..50 * 1024 * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&big, &data).unwrap();
    let want = host_sha256(&big);
    let guest_big = format!("{name}:/tmp/big");
    let out = nook_out(&["cp", big.to_str().unwrap(), &guest_big]);
    assert!(out.status.success(), "cp in: {}", text(&out.stderr));
    let out = exec(&name, &["sha256sum", "/tmp/big"]);
    assert!(
        text(&out.stdout).starts_with(&want),
        "guest hash: {}",
        text(&out.stdout)
    );
    let back = tmp.path().join("back");
    let out = nook_out(&["cp", &guest_big, back.to_str().unwrap()]);
    assert!(out.status.success(), "cp out: {}", text(&out.stderr));
    assert_eq!(host_sha256(&back), want);

    // A tree with modes and a symlink, in and out again.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.sh"), "#!/bin/sh\necho b\n").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    for (p, mode) in [("a.txt", 0o640), ("sub/b.sh", 0o755), ("sub", 0o750)] {
        std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = nook_out(&["cp", tree.to_str().unwrap(), &format!("{name}:/tmp")]);
    assert!(out.status.success(), "cp tree in: {}", text(&out.stderr));
    let out = exec(
        &name,
        &[
            "sh",
            "-c",
            "/tmp/tree/sub/b.sh; readlink /tmp/tree/link; stat -c %a /tmp/tree/a.txt",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "b\na.txt\n640\n",
        "{}",
        text(&out.stderr)
    );
    let back_tree = tmp.path().join("back_tree");
    let out = nook_out(&[
        "cp",
        &format!("{name}:/tmp/tree"),
        back_tree.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "cp tree out: {}", text(&out.stderr));
    assert_eq!(tree_listing(&back_tree), tree_listing(&tree));
}

#[test]
fn cp_guest_paths_with_dotdot_stay_in_the_guest() {
    if !ready() {
        return;
    }
    let name = unique("dotdot");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f");
    std::fs::write(&src, "inside\n").unwrap();
    // Written into the guest's /, not the host's.
    let escape = format!("nook-escape-{}", std::process::id());
    let out = nook_out(&[
        "cp",
        src.to_str().unwrap(),
        &format!("{name}:/tmp/../../../{escape}"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&exec(&name, &["cat", &format!("/{escape}")]).stdout),
        "inside\n"
    );
    assert!(
        !std::path::Path::new(&format!("/{escape}")).exists(),
        "the copy escaped to the host"
    );
    // Read from the guest's /etc, not the host's.
    let mark = format!("guest-{}", std::process::id());
    assert!(exec(
        &name,
        &["sh", "-c", &format!("echo {mark} > /etc/nook-mark")]
    )
    .status
    .success());
    let got = tmp.path().join("got");
    let out = nook_out(&[
        "cp",
        &format!("{name}:/tmp/../../etc/nook-mark"),
        got.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), format!("{mark}\n"));
}

#[test]
fn background_processes_take_stdin_report_output_and_exit() {
    if !ready() {
        return;
    }
    let name = unique("procs");
    let _c = Cleanup(name.clone());
    start(&name, &[]);
    let client = SessionClient::open(&nook::default_home(), &name).unwrap();
    let spec = nook_serve::wire::ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "read x; echo got $x; echo oops >&2; exit 3".into(),
        ],
        stdin: true,
        detach: true,
        ..Default::default()
    };
    let pid = client.exec(spec).unwrap().pid;
    let first = client.proc_read(pid, 0, None).unwrap();
    assert_eq!(first.exit, None, "ended before its stdin came");
    client.proc_stdin(pid, b"hello\n", true).unwrap();
    let exit = client.proc_wait(pid).unwrap();
    assert_eq!(exit.code, Some(3));
    let out = client.proc_read(pid, 0, None).unwrap();
    // The log takes stdout and stderr as they arrive: two pipes, whose
    // relative order the guest does not keep.
    let mut lines: Vec<String> = text(&out.data).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["got hello", "oops"]);
    assert_eq!(out.exit, Some(exit));
    assert!(!out.truncated);
    // Polling with a cap reports the rest as truncated, then continues
    // (from the log as it is, in whichever order the two pipes came).
    let whole = text(&out.data);
    let part = client.proc_read(pid, 0, Some(4)).unwrap();
    assert_eq!(
        (text(&part.data).as_str(), part.truncated, part.next_offset),
        (&whole[..4], true, 4)
    );
    let rest = client.proc_read(pid, part.next_offset, None).unwrap();
    assert_eq!(text(&rest.data), &whole[4..]);
    assert!(
        client.proc_read(pid + 100_000, 0, None).is_err(),
        "an unknown pid has output"
    );
}

#[test]
fn a_session_network_publishes_a_port_and_ps_counts_refused_flows() {
    if !ready() {
        return;
    }
    let name = unique("net");
    let _c = Cleanup(name.clone());
    start(
        &name,
        &["-p", "127.0.0.1:0:8000", "--allow", "192.0.2.0/24:9"],
    );
    let st = ps(&name).expect("listed");
    assert_eq!(st.published.len(), 1, "{st:?}");
    let host = st.published[0].host;
    assert!(host.ip().is_loopback() && host.port() != 0);
    let serve = "mkdir -p /srv && echo from-the-session > /srv/f && httpd -p 8000 -h /srv";
    let out = exec(&name, &["sh", "-c", serve]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut body = String::new();
    wait_until(
        "the published port answers",
        Duration::from_secs(60),
        || {
            let Ok(mut s) = std::net::TcpStream::connect(host) else {
                return false;
            };
            let _ = s.write_all(b"GET /f HTTP/1.0\r\n\r\n");
            let mut resp = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut resp);
            body = resp
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            !body.is_empty()
        },
    );
    assert_eq!(body, "from-the-session\n");
    // Port 80 of an allowed network is still refused (the rule says :9).
    let out = exec(&name, &["sh", "-c", "echo x | nc -w 3 192.0.2.1 80"]);
    assert_ne!(out.status.code(), Some(0));
    wait_until("ps shows the refused flow", Duration::from_secs(10), || {
        ps(&name).and_then(|s| s.net).is_some_and(|n| {
            n.recent_refusals
                .iter()
                .any(|r| r.destination == "192.0.2.1:80")
        })
    });
    assert!(nook_out(&["stop", &name]).status.success());
    assert!(
        std::net::TcpStream::connect_timeout(&host, Duration::from_secs(2)).is_err(),
        "the published port outlived the session"
    );
}

#[test]
fn a_session_balloon_is_set_from_the_cli_and_shown_by_ps() {
    if !ready() {
        return;
    }
    let name = unique("balloon");
    let _c = Cleanup(name.clone());
    start(&name, &["--balloon", "--memory", "256"]);
    // A session without a balloon option refuses a target; this one takes it.
    let out = nook_out(&["balloon", &name, "64"]);
    assert!(out.status.success(), "balloon: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("balloon target:  64 MiB"));
    let stats = || {
        let out = nook_out(&["balloon", &name, "--json"]);
        assert!(
            out.status.success(),
            "balloon --json: {}",
            text(&out.stderr)
        );
        serde_json::from_slice::<nook::MemoryStats>(&out.stdout).expect("memory stats json")
    };
    wait_until(
        "the balloon reaches 64 MiB",
        Duration::from_secs(60),
        || stats().balloon_mib == 64,
    );
    let s = stats();
    assert_eq!(s.memory_mib, 256);
    assert!(s.host_rss_bytes.is_some_and(|r| r > 0), "{s:?}");
    // `nook ps` shows what the guest has left (refreshed every 2 s).
    wait_until("ps shows 192/256Mi", Duration::from_secs(20), || {
        let out = nook_out(&["ps"]);
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("192/256Mi"))
    });
    assert_eq!(
        ps(&name).and_then(|s| s.memory).map(|m| m.balloon_mib),
        Some(64)
    );
    let out = nook_out(&["balloon", &name, "256"]);
    assert!(
        !out.status.success(),
        "a balloon as large as the memory is refused"
    );
    assert!(
        text(&out.stderr).contains("does not fit"),
        "{}",
        text(&out.stderr)
    );
    let out = exec(&name, &["echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n");
}
