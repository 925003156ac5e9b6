//! A `nook serve` for the benchmarks that go through the daemon, and a
//! client of its protocol.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A client of the daemon's protocol, handshaken.
pub struct Client {
    pub w: UnixStream,
    pub r: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let w = UnixStream::connect(socket).expect("connect");
        let r = BufReader::new(w.try_clone().expect("clone"));
        let mut c = Client { w, r };
        c.call(json!({"id": 0, "type": "handshake", "version": 1}));
        c
    }
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read");
        serde_json::from_str(&line).expect("a JSON line")
    }
    pub fn call(&mut self, v: Value) -> Value {
        let mut line = serde_json::to_vec(&v).expect("json");
        line.push(b'\n');
        self.w.write_all(&line).expect("write");
        self.read()
    }
}

/// The daemon under measurement: SIGTERM when the bench ends, panics included.
pub struct DaemonGuard(Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `nook serve --engine ENGINE` on a socket in `dir`; returns once
/// it listens.
pub fn start_daemon(dir: &Path, engine: &str) -> (DaemonGuard, PathBuf) {
    let socket = dir.join("run/nook.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_nook"))
        .args(["serve", "--engine", engine, "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nook serve");
    let child = DaemonGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, socket)
}
