//! The agent's request handling, tested on the host: the agent binary runs
//! as an ordinary process (not PID 1) connected to a Unix socket through
//! `NOOK_AGENT_SOCKET`, and this test plays the host side of the protocol.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nook_proto::*;

struct Agent {
    proc: Child,
    sock: UnixStream,
    _dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start(protocol: u32) -> (Agent, GuestHello) {
    let dir = std::env::temp_dir().join(format!(
        "nook-agent-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let proc = Command::new(env!("CARGO_BIN_EXE_nook-agent"))
        .env("NOOK_AGENT_SOCKET", &path)
        .spawn()
        .unwrap();
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut agent = Agent {
        proc,
        sock,
        _dir: dir,
    };
    let hello = match recv(&mut agent) {
        (0, GuestMsg::Hello(h)) => h,
        other => panic!("expected hello, got {other:?}"),
    };
    send(
        &mut agent,
        0,
        HostMsg::Hello(HostHello {
            protocol,
            time_ns: None,
        }),
    );
    (agent, hello)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn send(a: &mut Agent, stream: u32, msg: HostMsg) {
    let f = msg.to_frame(stream);
    write_frame(&mut a.sock, f.stream, f.kind, &f.payload).unwrap();
}

fn recv(a: &mut Agent) -> (u32, GuestMsg) {
    let f = read_frame(&mut a.sock)
        .unwrap()
        .expect("agent closed the channel");
    (f.stream, GuestMsg::from_frame(&f).unwrap())
}

#[derive(Debug, Default)]
struct Done {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<Exited>,
    error: Option<ErrorReply>,
}

/// Collects everything for `stream` until its Exit or Error.
fn collect(a: &mut Agent, stream: u32) -> Done {
    let mut d = Done::default();
    loop {
        let (s, m) = recv(a);
        assert_eq!(s, stream, "only one exec in flight");
        match m {
            GuestMsg::Started(_) => {}
            GuestMsg::Stdout(b) => d.stdout.extend(b),
            GuestMsg::Stderr(b) => d.stderr.extend(b),
            GuestMsg::Exit(e) => {
                d.exit = Some(e);
                return d;
            }
            GuestMsg::Error(e) => {
                d.error = Some(e);
                return d;
            }
            GuestMsg::Hello(_) => panic!("second hello"),
        }
    }
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn exit_codes_and_separate_streams() {
    let (mut a, hello) = start(PROTOCOL_VERSION);
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    send(
        &mut a,
        1,
        HostMsg::Exec(exec(&["sh", "-c", "echo out; echo err >&2; exit 7"])),
    );
    let d = collect(&mut a, 1);
    assert_eq!(d.stdout, b"out\n");
    assert_eq!(d.stderr, b"err\n");
    assert_eq!(d.exit.unwrap().code, Some(7));
}

#[test]
fn stdin_is_binary_safe() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut req = exec(&["cat"]);
    req.stdin = true;
    send(&mut a, 3, HostMsg::Exec(req));
    for chunk in data.chunks(STDIO_CHUNK) {
        send(&mut a, 3, HostMsg::Stdin(chunk.to_vec()));
    }
    send(&mut a, 3, HostMsg::Stdin(vec![]));
    let d = collect(&mut a, 3);
    assert_eq!(d.exit.unwrap().code, Some(0));
    assert!(
        d.stdout == data,
        "cat returned {} bytes, sent {}",
        d.stdout.len(),
        data.len()
    );
}

#[test]
fn missing_and_unexecutable_programs_are_errors() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    send(&mut a, 1, HostMsg::Exec(exec(&["/no/such/cmd"])));
    let e = collect(&mut a, 1).error.expect("an error reply");
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("/no/such/cmd"), "{}", e.message);

    let dir = std::env::temp_dir().join(format!("nook-noexec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(b"echo hi\n")
        .unwrap();
    send(&mut a, 2, HostMsg::Exec(exec(&[file.to_str().unwrap()])));
    let e = collect(&mut a, 2).error.expect("an error reply");
    assert_eq!(e.code, ErrorCode::NotExecutable);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn env_and_cwd_apply() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let mut req = exec(&["sh", "-c", "echo $FOO; pwd"]);
    req.env = vec![("FOO".into(), "bar".into())];
    req.cwd = Some("/tmp".into());
    send(&mut a, 1, HostMsg::Exec(req));
    assert_eq!(collect(&mut a, 1).stdout, b"bar\n/tmp\n");

    let mut req = exec(&["true"]);
    req.cwd = Some("/no/such/dir".into());
    send(&mut a, 2, HostMsg::Exec(req));
    assert_eq!(
        collect(&mut a, 2).error.unwrap().code,
        ErrorCode::BadRequest
    );
}

#[test]
fn user_switches_uid_gid_and_groups() {
    if !nix_is_root() {
        eprintln!("skipping: switching users needs root");
        return;
    }
    let (mut a, _) = start(PROTOCOL_VERSION);
    // Numeric ids need no passwd entry; HOME is then `/`.
    let mut req = exec(&["sh", "-c", "id -u; id -g; id -G; echo $HOME"]);
    req.user = Some("65432:65433".into());
    send(&mut a, 1, HostMsg::Exec(req));
    let d = collect(&mut a, 1);
    assert_eq!(
        String::from_utf8_lossy(&d.stdout),
        "65432\n65433\n65433\n/\n",
        "{}",
        String::from_utf8_lossy(&d.stderr)
    );

    let mut req = exec(&["id", "-u"]);
    req.user = Some("no-such-user-here".into());
    send(&mut a, 2, HostMsg::Exec(req));
    let e = collect(&mut a, 2).error.expect("an error reply");
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("no-such-user-here"), "{}", e.message);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    // The grandchild writes its pid; after the timeout it must be gone too.
    let dir = std::env::temp_dir().join(format!("nook-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let mut req = exec(&["sh", "-c", &script]);
    req.timeout_ms = Some(300);
    let t0 = Instant::now();
    send(&mut a, 1, HostMsg::Exec(req));
    let d = collect(&mut a, 1);
    let exit = d.exit.unwrap();
    assert!(exit.timed_out);
    assert_eq!(exit.signal, Some(9));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Give the kernel a moment to deliver SIGKILL to the group.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "grandchild {pid} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn signals_reach_the_command() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    send(&mut a, 5, HostMsg::Exec(exec(&["sleep", "30"])));
    match recv(&mut a) {
        (5, GuestMsg::Started(_)) => {}
        other => panic!("expected started, got {other:?}"),
    }
    send(&mut a, 5, HostMsg::Signal(2));
    let d = collect(&mut a, 5);
    assert_eq!(d.exit.unwrap().signal, Some(2));
}

#[test]
fn concurrent_execs_are_multiplexed() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    for s in 1..=4u32 {
        let script = format!("sleep 0.{}; echo stream{s}", 5 - s);
        send(&mut a, s, HostMsg::Exec(exec(&["sh", "-c", &script])));
    }
    let mut outs = std::collections::HashMap::<u32, Vec<u8>>::new();
    let mut exits = 0;
    while exits < 4 {
        match recv(&mut a) {
            (s, GuestMsg::Stdout(b)) => outs.entry(s).or_default().extend(b),
            (_, GuestMsg::Exit(e)) => {
                assert_eq!(e.code, Some(0));
                exits += 1;
            }
            (_, GuestMsg::Started(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for s in 1..=4u32 {
        assert_eq!(outs[&s], format!("stream{s}\n").into_bytes());
    }
}

#[test]
fn version_mismatch_fails_closed() {
    let (mut a, _) = start(PROTOCOL_VERSION + 1);
    match recv(&mut a) {
        (0, GuestMsg::Error(e)) => assert_eq!(e.code, ErrorCode::VersionMismatch),
        other => panic!("expected a version error, got {other:?}"),
    }
    // The agent refuses to serve and ends.
    let status = a.proc.wait().unwrap();
    assert!(!status.success());
}
