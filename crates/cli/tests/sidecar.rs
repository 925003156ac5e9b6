//! End-to-end test of `devshell-vm` sidecar compatibility: speaks the
//! sidecar protocol line by line against `nook serve`, the way the
//! xtask_todo dev shell's β client does (one connection per client
//! process, one reply line per request), with a real guest on qemu.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::daemon::{pid_alive, wait_until, Daemon};
use common::{qemu_of, ready};

struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(d: &Daemon) -> Conn {
        let w = UnixStream::connect(&d.socket).expect("connect");
        w.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Conn { w, r }
    }
    fn raw(&mut self, line: &[u8]) -> Value {
        self.w.write_all(line).unwrap();
        let mut reply = String::new();
        assert!(self.r.read_line(&mut reply).unwrap() > 0, "no reply");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"))
    }
    fn call(&mut self, v: Value) -> Value {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.raw(&line)
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// The release string a bzImage carries (its header points at it).
fn kernel_release(bz: &std::path::Path) -> String {
    let mut f = std::fs::File::open(bz).unwrap();
    let mut head = vec![0u8; 0x10000];
    f.read_exact(&mut head).unwrap();
    let off = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let s: Vec<u8> = head[off..]
        .iter()
        .take_while(|b| **b != 0)
        .copied()
        .collect();
    String::from_utf8_lossy(&s)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn sidecar_protocol_against_nook_serve() {
    if !ready() {
        return;
    }
    let Some(kernel) = std::env::var_os("NOOK_TEST_KERNEL") else {
        eprintln!("skipping: NOOK_TEST_KERNEL is not set (run scripts/test)");
        return;
    };
    let guest_release = kernel_release(std::path::Path::new(&kernel));
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        guest_release,
        host_release.trim(),
        "cannot tell guest from host"
    );

    let d = Daemon::start(&["--beta-image", "builtin"]);
    let staging = tempfile::tempdir().unwrap();
    std::fs::create_dir(staging.path().join("proj")).unwrap();
    std::fs::write(staging.path().join("proj/in.txt"), "hello from the host\n").unwrap();
    let sid = format!("pid-{}", std::process::id());
    let ws = "/workspace";

    // First connection: the dev shell's whole round.
    let mut c = Conn::open(&d);
    let r = c.call(json!({"op": "handshake", "version": 1, "client": "cargo-devshell", "client_version": "0.1"}));
    assert_eq!(r["op"], "handshake_ok", "{r}");
    assert_eq!(r["version"], 1);
    let r = c.call(json!({"op": "session_start", "session_id": sid,
        "staging_dir": staging.path(), "guest_workspace": ws,
        "backend": "beta-stub", "backend_config": {}}));
    assert_eq!(r["op"], "session_ok", "{r}");
    assert_eq!(r["session_id"], sid.as_str());
    let sync = |c: &mut Conn, direction: &str| {
        let r = c.call(json!({"op": "sync_request", "session_id": sid,
            "direction": direction, "vfs_cwd_leaf": "proj"}));
        assert_eq!(r["op"], "sync_ok", "{r}");
    };
    sync(&mut c, "push_to_guest");
    let exec = |c: &mut Conn, argv: &[&str], timeout_ms: Option<u64>| {
        let mut req = json!({"op": "exec", "session_id": sid,
            "guest_cwd": "/workspace/proj", "argv": argv, "env": {}});
        if let Some(ms) = timeout_ms {
            req["timeout_ms"] = ms.into();
        }
        c.call(req)
    };
    let r = exec(&mut c, &["cat", "in.txt"], None);
    assert_eq!(r["op"], "exec_result", "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["signal"], Value::Null);
    let r = exec(&mut c, &["sh", "-c", "echo new > out.txt; uname -r"], None);
    assert_eq!(r["exit_code"], 0, "{r}");
    let r = exec(&mut c, &["sh", "-c", "exit 3"], None);
    assert_eq!(r["exit_code"], 3, "{r}");
    let log = d.log_text();
    assert!(
        log.contains(&format!("[{sid}] hello from the host")),
        "{log}"
    );
    assert!(
        log.contains(&format!("[{sid}] {guest_release}\n")),
        "guest kernel not in the log: {log}"
    );
    assert!(
        !log.contains(&format!("[{sid}] {}", host_release.trim())),
        "{log}"
    );
    sync(&mut c, "pull_from_guest");
    assert_eq!(
        std::fs::read_to_string(staging.path().join("proj/out.txt")).unwrap(),
        "new\n"
    );

    // The leaf `.` syncs the workspace itself, not a copy inside it.
    let r = c.call(json!({"op": "sync_request", "session_id": sid,
        "direction": "push_to_guest", "vfs_cwd_leaf": "."}));
    assert_eq!(r["op"], "sync_ok", "{r}");
    let r = c.call(json!({"op": "guest_fs", "session_id": sid,
        "operation": "list_dir", "guest_path": ws}));
    assert_eq!(r["names"], json!(["proj"]), "{r}");

    // guest_fs.
    let fs = |c: &mut Conn, op: &str, path: &str, content: Option<&str>| {
        let mut req =
            json!({"op": "guest_fs", "session_id": sid, "operation": op, "guest_path": path});
        if let Some(s) = content {
            req["content_base64"] = b64(s).into();
        }
        c.call(req)
    };
    let r = fs(&mut c, "list_dir", "/workspace/proj", None);
    assert_eq!(r["op"], "guest_fs_ok", "{r}");
    assert_eq!(r["names"], json!(["in.txt", "out.txt"]));
    let r = fs(&mut c, "read_file", "/workspace/proj/in.txt", None);
    assert_eq!(unb64(&r["content_base64"]), "hello from the host\n");
    let r = fs(
        &mut c,
        "write_file",
        "/workspace/proj/w.txt",
        Some("written"),
    );
    assert_eq!(r["op"], "guest_fs_ok", "{r}");
    let r = fs(&mut c, "read_file", "/workspace/proj/w.txt", None);
    assert_eq!(unb64(&r["content_base64"]), "written");
    let r = fs(&mut c, "mkdir", "/workspace/proj/sub/deeper", None);
    assert_eq!(r["op"], "guest_fs_ok", "{r}");
    let r = fs(&mut c, "list_dir", "/workspace/proj/sub", None);
    assert_eq!(r["names"], json!(["deeper"]), "{r}");
    let r = fs(&mut c, "remove", "/workspace/proj/sub", None);
    assert_eq!(r["op"], "guest_fs_ok", "{r}");
    for (op, path, code) in [
        ("list_dir", "/workspace/proj/sub", "not_found"),
        ("read_file", "/workspace/proj/missing", "not_found"),
        ("list_dir", "/workspace/proj/in.txt", "not_a_directory"),
        ("read_file", "/workspace/proj", "is_a_directory"),
        ("read_file", "../../etc/passwd", "invalid_path"),
        ("read_file", "/workspace/../etc/passwd", "invalid_path"),
        ("list_dir", "/etc", "invalid_path"),
    ] {
        let r = fs(&mut c, op, path, None);
        assert_eq!(r["op"], "guest_fs_error", "{op} {path}: {r}");
        assert_eq!(r["code"], code, "{op} {path}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A command past its timeout: exec_timeout, and its process group is gone.
    let r = exec(&mut c, &["sh", "-c", "sleep 300 & sleep 301"], Some(1000));
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(r["code"], "exec_timeout", "{r}");
    let r = exec(
        &mut c,
        &[
            "sh",
            "-c",
            "ps | grep -v grep | grep -q 'sleep 30[01]' && exit 1; exit 0",
        ],
        None,
    );
    assert_eq!(
        r["exit_code"], 0,
        "a timed-out command's process survived: {r}"
    );

    // Bad lines.
    let r = c.raw(b"not json at all\n");
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("parse")),
        "{r}"
    );
    let r = c.call(json!({"op": "teleport", "session_id": sid}));
    assert_eq!(r["code"], "unknown_op", "{r}");
    let r = c.call(json!({"op": "exec", "session_id": "nobody", "argv": ["true"]}));
    assert_eq!(r["code"], "no_session", "{r}");
    drop(c);

    // A second connection (the next dev-shell process) finds the session.
    let mut c = Conn::open(&d);
    assert_eq!(
        c.call(json!({"op": "handshake", "version": 1}))["op"],
        "handshake_ok"
    );
    let r = c.call(json!({"op": "session_start", "session_id": sid,
        "staging_dir": staging.path(), "guest_workspace": ws}));
    assert_eq!(r["op"], "session_ok", "{r}");
    let r = exec(&mut c, &["cat", "w.txt"], None);
    assert_eq!(r["exit_code"], 0, "the session did not persist: {r}");
    drop(c);

    // A third one shuts it down: its VM goes.
    let host = std::fs::read_dir(dirs_sessions())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{sid}"))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("state.json")).ok())
        .filter_map(|s| serde_json::from_str::<Value>(&s).ok())
        .filter_map(|v| v["pid"].as_u64())
        .find(|p| pid_alive(*p as u32))
        .expect("the sidecar session's host") as u32;
    assert!(!qemu_of(host).is_empty());
    let mut c = Conn::open(&d);
    assert_eq!(
        c.call(json!({"op": "handshake", "version": 1}))["op"],
        "handshake_ok"
    );
    let r = c.call(json!({"op": "session_shutdown", "session_id": sid, "stop_vm": false}));
    assert_eq!(r["op"], "shutdown_ok", "{r}");
    assert_eq!(r["session_id"], sid.as_str());
    wait_until("the sidecar VM is gone", Duration::from_secs(30), || {
        !pid_alive(host) && qemu_of(host).is_empty()
    });
    let r = exec(&mut c, &["true"], None);
    assert_eq!(r["code"], "no_session", "{r}");
}

/// With no --beta-image, sidecar sessions boot the Rust toolchain image
/// (built on first use): the dev shell's `cargo run` works in the guest,
/// and its build output comes back with a pull. Runs where scripts/test
/// sets NOOK_TEST_DEBIAN_IMAGE (the image build takes minutes once).
#[test]
fn sidecar_sessions_run_cargo_in_the_default_image() {
    if !ready() {
        return;
    }
    if std::env::var_os("NOOK_TEST_DEBIAN_IMAGE").is_none()
        && std::env::var_os("NOOK_SLOW_TESTS").is_none()
    {
        eprintln!("skipping: set NOOK_TEST_DEBIAN_IMAGE=1 to use the Rust toolchain image (minutes to build once)");
        return;
    }
    // A cold $NOOK_HOME builds the Rust image first, for minutes: here,
    // not inside session_start, whose reply the client waits for at most
    // 180 s.
    nook_serve::toolchain::ensure_rust_image(&nook::default_home(), &mut std::io::stderr())
        .expect("the Rust toolchain image");
    let d = Daemon::start(&[]);
    let staging = tempfile::tempdir().unwrap();
    let proj = staging.path().join("hello");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(
        proj.join("Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("src/main.rs"),
        "fn main() { println!(\"hello from cargo in nook\"); }\n",
    )
    .unwrap();
    let sid = format!("cargo-{}", std::process::id());
    let mut c = Conn::open(&d);
    assert_eq!(
        c.call(json!({"op": "handshake", "version": 1}))["op"],
        "handshake_ok"
    );
    let r = c.call(json!({"op": "session_start", "session_id": sid,
        "staging_dir": staging.path(), "guest_workspace": "/workspace"}));
    assert_eq!(r["op"], "session_ok", "{r}: {}", d.log_text());
    let r = c.call(json!({"op": "sync_request", "session_id": sid,
        "direction": "push_to_guest", "vfs_cwd_leaf": "hello"}));
    assert_eq!(r["op"], "sync_ok", "{r}");
    let r = c.call(
        json!({"op": "exec", "session_id": sid, "guest_cwd": "/workspace/hello",
        "argv": ["cargo", "run", "--offline"], "env": {}}),
    );
    assert_eq!(r["op"], "exec_result", "{r}");
    assert_eq!(r["exit_code"], 0, "{r}: {}", d.log_text());
    assert!(
        d.log_text()
            .contains(&format!("[{sid}] hello from cargo in nook")),
        "{}",
        d.log_text()
    );
    let r = c.call(json!({"op": "sync_request", "session_id": sid,
        "direction": "pull_from_guest", "vfs_cwd_leaf": "hello"}));
    assert_eq!(r["op"], "sync_ok", "{r}");
    assert!(
        proj.join("target/debug/hello").is_file(),
        "the build did not come back"
    );
    let r = c.call(json!({"op": "session_shutdown", "session_id": sid}));
    assert_eq!(r["op"], "shutdown_ok", "{r}");
}

fn dirs_sessions() -> std::path::PathBuf {
    std::env::var_os("NOOK_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/nook")
        })
        .join("sessions")
}
