//! The agent's request handling, tested on the host: the agent binary runs
//! as an ordinary process (not PID 1) connected to a Unix socket through
//! `NOOK_AGENT_SOCKET`, and this test plays the host side of the protocol.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nook_proto::*;

struct Agent {
    proc: Child,
    sock: UnixStream,
    dec: Decoder,
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
        dec: Decoder::new(),
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
    recv_within(a, Duration::from_secs(20)).expect("the agent said nothing for 20 s")
}

/// The next message, or `None` when nothing arrives within `wait`.
fn recv_within(a: &mut Agent, wait: Duration) -> Option<(u32, GuestMsg)> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(f) = a.dec.next_frame().unwrap() {
            return Some((f.stream, GuestMsg::from_frame(&f).unwrap()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        a.sock.set_read_timeout(Some(left)).unwrap();
        match a.sock.read(&mut buf) {
            Ok(0) => panic!("agent closed the channel"),
            Ok(n) => a.dec.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading from the agent: {e}"),
        }
    }
}

#[derive(Debug)]
struct Done {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<Exited>,
    error: Option<ErrorReply>,
    stdin_credit: u64,
    stdin_closed: bool,
}

/// The host's side of one exec's pipes: what it received and granted.
struct Reader {
    done: Done,
    stdout: RecvWindow,
    stderr: RecvWindow,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            done: Done {
                stdout: Vec::new(),
                stderr: Vec::new(),
                exit: None,
                error: None,
                stdin_credit: 0,
                stdin_closed: false,
            },
            stdout: RecvWindow::new(Pipe::Stdout),
            stderr: RecvWindow::new(Pipe::Stderr),
        }
    }

    /// Keeps output of `pipe`, checking the agent stays in its window; with
    /// `grant`, consumes it at once and returns the credit to give back.
    fn output(&mut self, pipe: Pipe, bytes: Vec<u8>, grant: bool) -> Option<Credit> {
        let (window, kept) = match pipe {
            Pipe::Stdout => (&mut self.stdout, &mut self.done.stdout),
            _ => (&mut self.stderr, &mut self.done.stderr),
        };
        window
            .receive(bytes.len())
            .unwrap_or_else(|e| panic!("the agent overran {pipe:?}'s window: {e}"));
        kept.extend(&bytes);
        grant.then(|| window.consume(bytes.len())).flatten()
    }

    /// Reads fast until the stream's Exit or Error.
    fn finish(&mut self, a: &mut Agent, stream: u32) {
        loop {
            let (s, m) = recv(a);
            assert_eq!(s, stream, "only one exec in flight");
            if self.take(a, s, m, true) {
                return;
            }
        }
    }

    /// Takes one message; with `grant`, consumes output at once and gives
    /// the credit back (a fast reader). Returns true at Exit or Error.
    fn take(&mut self, a: &mut Agent, stream: u32, m: GuestMsg, grant: bool) -> bool {
        let d = &mut self.done;
        let credit = match m {
            GuestMsg::Started(_) => None,
            GuestMsg::Stdout(b) => self.output(Pipe::Stdout, b, grant),
            GuestMsg::Stderr(b) => self.output(Pipe::Stderr, b, grant),
            GuestMsg::Exit(e) => {
                d.exit = Some(e);
                return true;
            }
            GuestMsg::Error(e) => {
                d.error = Some(e);
                return true;
            }
            GuestMsg::Credit(c) => {
                assert_eq!(c.pipe, Pipe::Stdin);
                d.stdin_credit += c.bytes;
                None
            }
            GuestMsg::PipeClosed(c) => {
                assert_eq!(c.pipe, Pipe::Stdin);
                d.stdin_closed = true;
                None
            }
            GuestMsg::Hello(_) => panic!("second hello"),
            other => panic!("a file reply on an exec stream: {other:?}"),
        };
        if let Some(c) = credit {
            send(a, stream, HostMsg::Credit(c));
        }
        false
    }
}

/// Collects everything for `stream` until its Exit or Error, reading fast.
fn collect(a: &mut Agent, stream: u32) -> Done {
    let mut r = Reader::new();
    r.finish(a, stream);
    r.done
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

/// Reads whatever arrives until the agent has been quiet for `quiet`,
/// granting no credit (a reader that stopped reading).
fn drain_quiet(a: &mut Agent, r: &mut Reader, stream: u32, quiet: Duration) {
    while let Some((s, m)) = recv_within(a, quiet) {
        assert_eq!(s, stream);
        assert!(!r.take(a, s, m, false), "the command ended early");
    }
}

#[test]
fn a_slow_reader_of_stdout_or_stderr_holds_the_command_to_one_window() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    for (stream, pipe, script) in [
        (1, Pipe::Stdout, "exec cat /dev/zero"),
        (2, Pipe::Stderr, "exec cat /dev/zero >&2"),
    ] {
        send(&mut a, stream, HostMsg::Exec(exec(&["sh", "-c", script])));
        let mut r = Reader::new();
        let got = |r: &Reader| match pipe {
            Pipe::Stdout => r.done.stdout.len() as u64,
            _ => r.done.stderr.len() as u64,
        };
        // Nothing is read: the agent sends one window and stops.
        drain_quiet(&mut a, &mut r, stream, Duration::from_millis(700));
        assert_eq!(got(&r), PIPE_WINDOW, "{pipe:?}");
        // A batch of credit lets exactly that much more through.
        let window = match pipe {
            Pipe::Stdout => &mut r.stdout,
            _ => &mut r.stderr,
        };
        let credit = window.consume(CREDIT_BATCH as usize).expect("a batch");
        send(&mut a, stream, HostMsg::Credit(credit));
        drain_quiet(&mut a, &mut r, stream, Duration::from_millis(700));
        assert_eq!(got(&r), PIPE_WINDOW + CREDIT_BATCH, "{pipe:?}");
        // The reader goes away: the command dies of SIGPIPE, as in a shell.
        send(&mut a, stream, HostMsg::PipeClosed(PipeClosed { pipe }));
        r.finish(&mut a, stream);
        assert_eq!(
            r.done.exit.unwrap().signal,
            Some(13),
            "{pipe:?}: {:?}",
            r.done.exit
        );
    }
}

/// Sends `data` as stdin, never beyond the agent's credit, then end of
/// input; returns the credit granted before `early` passed.
fn send_stdin_with_credit(
    a: &mut Agent,
    r: &mut Reader,
    stream: u32,
    data: &[u8],
    early: Duration,
) -> u64 {
    let t0 = Instant::now();
    let mut credit = SendCredit::new();
    let mut granted_early = 0;
    let mut seen = 0;
    let mut chunks = data.chunks(STDIO_CHUNK).peekable();
    while let Some(chunk) = chunks.peek() {
        if credit.available() >= chunk.len() as u64 {
            credit.take(chunk.len());
            send(a, stream, HostMsg::Stdin(chunk.to_vec()));
            chunks.next();
            continue;
        }
        let (s, m) = recv(a);
        assert!(!r.take(a, s, m, true), "the command ended early");
        credit.grant(r.done.stdin_credit - seen);
        seen = r.done.stdin_credit;
        if t0.elapsed() < early {
            granted_early = seen;
        }
    }
    send(a, stream, HostMsg::Stdin(vec![]));
    granted_early
}

#[test]
fn stdin_is_granted_only_as_the_command_reads_it() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let mut req = exec(&["sh", "-c", "sleep 1.5; wc -c"]);
    req.stdin = true;
    send(&mut a, 1, HostMsg::Exec(req));
    let data = vec![7u8; 8 << 20];
    let mut r = Reader::new();
    let early = send_stdin_with_credit(&mut a, &mut r, 1, &data, Duration::from_millis(1200));
    // While the command sleeps only the kernel pipe's buffer is taken
    // (64 KiB by default, at most pipe-max-size).
    assert!(
        early <= 1 << 20,
        "{early} bytes granted before the command read any"
    );
    r.finish(&mut a, 1);
    assert_eq!(
        String::from_utf8_lossy(&r.done.stdout).trim(),
        (8 << 20).to_string()
    );
    assert_eq!(r.done.exit.unwrap().code, Some(0));
}

#[test]
fn a_host_that_overruns_the_stdin_window_gets_the_command_killed() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let mut req = exec(&["sleep", "30"]);
    req.stdin = true;
    send(&mut a, 1, HostMsg::Exec(req));
    // 4 MiB without waiting for credit: far more than a window plus any
    // pipe buffer.
    for _ in 0..(4 << 20) / STDIO_CHUNK {
        send(&mut a, 1, HostMsg::Stdin(vec![0u8; STDIO_CHUNK]));
    }
    let d = collect(&mut a, 1);
    assert_eq!(d.exit.unwrap().signal, Some(9));
}

#[test]
fn a_command_that_closes_stdin_tells_the_host_to_stop() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let mut req = exec(&["sh", "-c", "exec 0<&-; echo closed; sleep 1; echo done"]);
    req.stdin = true;
    send(&mut a, 1, HostMsg::Exec(req));
    let mut r = Reader::new();
    // Wait until the command says it closed its stdin (a fixed sleep was
    // too short on a loaded host), then write.
    while !r.done.stdout.ends_with(b"closed\n") {
        let (s, m) = recv(&mut a);
        assert!(
            !r.take(&mut a, s, m, true),
            "ended before stdin was written"
        );
    }
    send(&mut a, 1, HostMsg::Stdin(b"ignored".to_vec()));
    r.finish(&mut a, 1);
    assert!(r.done.stdin_closed, "no PipeClosed for stdin");
    assert_eq!(r.done.stdout, b"closed\ndone\n");
}

#[test]
fn output_waiting_for_credit_outlives_the_drain_grace() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    // The command writes 2 MB and exits at once; the host reads nothing
    // for longer than the agent's 2 s drain grace, then everything.
    send(
        &mut a,
        1,
        HostMsg::Exec(exec(&["head", "-c", "2000000", "/dev/zero"])),
    );
    let mut r = Reader::new();
    drain_quiet(&mut a, &mut r, 1, Duration::from_secs(3));
    let credit = r.stdout.consume(r.done.stdout.len()).expect("a batch");
    send(&mut a, 1, HostMsg::Credit(credit));
    r.finish(&mut a, 1);
    assert_eq!(r.done.stdout.len(), 2_000_000);
    assert_eq!(r.done.exit.unwrap().code, Some(0));
}

#[test]
fn a_background_process_holding_stdout_does_not_hold_the_exit() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let t0 = Instant::now();
    send(
        &mut a,
        1,
        HostMsg::Exec(exec(&["sh", "-c", "sleep 8 & echo hi"])),
    );
    let d = collect(&mut a, 1);
    assert_eq!(d.stdout, b"hi\n");
    assert_eq!(d.exit.unwrap().code, Some(0));
    // Exit comes after the 2 s drain grace, not when the sleep ends.
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
}

/// The last frame of file operation `stream`, with any content before it.
fn file_op(
    a: &mut Agent,
    stream: u32,
    req: FileRequest,
) -> (Vec<u8>, Result<FileReply, ErrorReply>) {
    send(a, stream, HostMsg::File(req));
    file_reply(a, stream)
}

fn file_reply(a: &mut Agent, stream: u32) -> (Vec<u8>, Result<FileReply, ErrorReply>) {
    let mut content = Vec::new();
    loop {
        let (s, m) = recv(a);
        assert_eq!(s, stream);
        match m {
            GuestMsg::FileContent(b) => content.extend(b),
            GuestMsg::FileDone(r) => return (content, Ok(r)),
            GuestMsg::Error(e) => return (content, Err(e)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn file_operations() {
    let (mut a, _) = start(PROTOCOL_VERSION);
    let dir = tempfile_dir("files");
    let d = |p: &str| format!("{}/{p}", dir.display());
    let (_, r) = file_op(
        &mut a,
        1,
        FileRequest::Mkdir {
            path: d("x/y"),
            mode: 0o750,
        },
    );
    assert_eq!(r.unwrap(), FileReply::Ok);
    // A write lands whole (atomically, through a temporary) with its mode.
    let data: Vec<u8> = (0..3 * MAX_READ + 17).map(|i| (i % 251) as u8).collect();
    send(
        &mut a,
        2,
        HostMsg::File(FileRequest::Write {
            path: d("x/y/f"),
            mode: 0o640,
        }),
    );
    for c in data.chunks(STDIO_CHUNK) {
        send(&mut a, 2, HostMsg::FileChunk(c.to_vec()));
    }
    assert!(
        !std::path::Path::new(&d("x/y/f")).exists(),
        "visible before the last chunk"
    );
    send(&mut a, 2, HostMsg::FileChunk(Vec::new()));
    assert_eq!(file_reply(&mut a, 2).1.unwrap(), FileReply::Ok);
    assert_eq!(std::fs::read(d("x/y/f")).unwrap(), data);
    // Reads come in windows of at most MAX_READ bytes.
    let mut back = Vec::new();
    let mut stream = 10;
    loop {
        stream += 1;
        let (chunk, r) = file_op(
            &mut a,
            stream,
            FileRequest::Read {
                path: d("x/y/f"),
                offset: back.len() as u64,
                len: u32::MAX,
            },
        );
        let FileReply::Read { size, sent } = r.unwrap() else {
            panic!("not a read reply")
        };
        assert_eq!(size, data.len() as u64);
        assert_eq!(sent, chunk.len() as u64);
        assert!(sent <= MAX_READ as u64);
        back.extend(chunk);
        if sent == 0 {
            break;
        }
    }
    assert_eq!(back, data);
    let (_, r) = file_op(
        &mut a,
        3,
        FileRequest::Symlink {
            target: "f".into(),
            path: d("x/y/l"),
        },
    );
    assert_eq!(r.unwrap(), FileReply::Ok);
    let (_, r) = file_op(&mut a, 4, FileRequest::List { path: d("x/y") });
    let FileReply::List { entries, truncated } = r.unwrap() else {
        panic!("not a list")
    };
    assert!(!truncated);
    let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(names, [("f", FileKind::File), ("l", FileKind::Symlink)]);
    assert_eq!(entries[0].mode, 0o640);
    assert_eq!(entries[1].link_target.as_deref(), Some("f"));
    let (_, r) = file_op(&mut a, 5, FileRequest::Stat { path: d("x/y") });
    let FileReply::Stat(st) = r.unwrap() else {
        panic!("not a stat")
    };
    assert_eq!((st.kind, st.mode), (FileKind::Dir, 0o750));
    // Errors carry their kind.
    let (_, r) = file_op(
        &mut a,
        6,
        FileRequest::Read {
            path: d("x"),
            offset: 0,
            len: 1,
        },
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::IsADirectory);
    let (_, r) = file_op(&mut a, 7, FileRequest::Stat { path: d("nope") });
    assert_eq!(r.unwrap_err().code, ErrorCode::NotFound);
    let (_, r) = file_op(&mut a, 8, FileRequest::List { path: d("x/y/f") });
    assert_eq!(r.unwrap_err().code, ErrorCode::NotADirectory);
    let (_, r) = file_op(
        &mut a,
        9,
        FileRequest::Remove {
            path: d("x"),
            recursive: false,
        },
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::NotEmpty);
    let (_, r) = file_op(
        &mut a,
        30,
        FileRequest::Stat {
            path: "relative".into(),
        },
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest);
    let (_, r) = file_op(
        &mut a,
        31,
        FileRequest::Remove {
            path: d("x"),
            recursive: true,
        },
    );
    assert_eq!(r.unwrap(), FileReply::Ok);
    assert!(!std::path::Path::new(&d("x")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nook-agent-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
