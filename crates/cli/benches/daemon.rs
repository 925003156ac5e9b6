//! `cargo bench -p nook-cli --bench daemon`: what the daemon (`nook serve`)
//! costs. Prints a table:
//! - daemon exec round trip of `true` (request line out to `exit` event
//!   in, on an open connection), beside the guest's own fork+exec+wait of
//!   `true` (a shell loop timed with /proc/uptime) and beside a whole
//!   `nook exec SESSION -- true` process;
//! - `NOOK_BENCH_SESSIONS` (default 10) sessions created at once through
//!   the daemon: time to all running, each one's create latency, memory per
//!   session (PSS of its host process and its VM process);
//! - exec round trips of `true` with all of them busy: every session runs
//!   `NOOK_BENCH_EXECS` (default 20) execs at once.
//!
//! Sessions boot on the engine `NOOK_BENCH_ENGINE` (default qemu). Needs
//! `NOOK_AGENT` and prepared assets: run `scripts/setup` first.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::daemon::{start_daemon, Client};
use common::{env_usize, ms, pct, pss_kib, qemu_pids};

use serde_json::json;

impl Client {
    /// Runs `argv` and returns (round trip, stdout).
    fn exec(&mut self, session: &str, argv: &[&str]) -> (Duration, String) {
        let t = Instant::now();
        let mut line =
            serde_json::to_vec(&json!({"id": 1, "type": "exec", "session": session, "argv": argv}))
                .expect("json");
        line.push(b'\n');
        self.w.write_all(&line).expect("write");
        let mut out = Vec::new();
        loop {
            let ev = self.read();
            match ev["type"].as_str() {
                Some("started") | Some("stderr") => {}
                Some("stdout") => {
                    use base64::Engine as _;
                    out.extend(
                        base64::engine::general_purpose::STANDARD
                            .decode(ev["data"].as_str().unwrap_or_default())
                            .unwrap_or_default(),
                    )
                }
                Some("exit") => {
                    assert_eq!(ev["code"], 0, "{ev}");
                    return (t.elapsed(), String::from_utf8_lossy(&out).into_owned());
                }
                _ => panic!("exec {argv:?}: {ev}"),
            }
        }
    }
}

fn main() {
    let engine = std::env::var("NOOK_BENCH_ENGINE").unwrap_or_else(|_| "qemu".into());
    let sessions = env_usize("NOOK_BENCH_SESSIONS", 10);
    let execs = env_usize("NOOK_BENCH_EXECS", 20);
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, socket) = start_daemon(dir.path(), &engine);
    println!("engine: {engine}  sessions: {sessions}  execs per session under load: {execs}\n");

    // One session: daemon round trip, guest fork+exec, whole CLI process.
    let mut c = Client::connect(&socket);
    let st = c.call(json!({"id": 1, "type": "session_create"}));
    let name = st["session"]["name"]
        .as_str()
        .expect("a session")
        .to_string();
    for _ in 0..5 {
        c.exec(&name, &["true"]);
    }
    let rtt: Vec<f64> = (0..100).map(|_| ms(c.exec(&name, &["true"]).0)).collect();
    let script = "read s _ < /proc/uptime; i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; read e _ < /proc/uptime; echo $s $e";
    let mut guest = Vec::new();
    for _ in 0..3 {
        let (_, out) = c.exec(&name, &["sh", "-c", script]);
        let v: Vec<f64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 {
            guest.push((v[1] - v[0]) * 1000.0 / 200.0);
        }
    }
    let cli: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new(env!("CARGO_BIN_EXE_nook"))
                .args(["exec", &name, "--", "true"])
                .stdin(Stdio::null())
                .status()
                .expect("nook exec");
            assert!(st.success());
            ms(t.elapsed())
        })
        .collect();
    drop(c);

    // Many sessions at once, each from its own client.
    let t0 = Instant::now();
    let clients: Vec<_> = (0..sessions)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket);
                let t = Instant::now();
                let st = c.call(json!({"id": i, "type": "session_create"}));
                let name = st["session"]["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("create: {st}"))
                    .to_string();
                let host = st["session"]["pid"].as_u64().unwrap_or(0) as u32;
                (c, name, host, ms(t.elapsed()))
            })
        })
        .collect();
    let clients: Vec<_> = clients
        .into_iter()
        .map(|t| t.join().expect("create"))
        .collect();
    let all_running = ms(t0.elapsed());
    let create: Vec<f64> = clients.iter().map(|c| c.3).collect();
    let pss: Vec<f64> = clients
        .iter()
        .map(|(_, _, host, _)| {
            let vm: u64 = qemu_pids(*host).into_iter().map(pss_kib).sum();
            (vm + pss_kib(*host)) as f64 / 1024.0
        })
        .collect();
    let loaded: Vec<_> = clients
        .into_iter()
        .map(|(mut c, name, _, _)| {
            std::thread::spawn(move || {
                let v: Vec<f64> = (0..execs).map(|_| ms(c.exec(&name, &["true"]).0)).collect();
                (c, v)
            })
        })
        .collect();
    let mut under_load = Vec::new();
    let mut keep = Vec::new();
    for t in loaded {
        let (c, v) = t.join().expect("execs");
        under_load.extend(v);
        keep.push(c);
    }

    println!("{:<62} {:>9} {:>9}", "measure", "median", "p95");
    let row = |what: &str, v: &[f64]| {
        println!(
            "{:<62} {:>9.2} {:>9.2}",
            what,
            pct(v.to_vec(), 0.5),
            pct(v.to_vec(), 0.95)
        )
    };
    row("daemon exec round trip of `true`, ms", &rtt);
    row("guest's own fork+exec+wait of `true`, ms", &guest);
    row("`nook exec SESSION -- true`, whole process, ms", &cli);
    row(
        &format!("session_create, {sessions} at once, each, ms"),
        &create,
    );
    row(
        &format!("memory per session (host + VM PSS), {sessions} running, MiB"),
        &pss,
    );
    row(
        &format!("daemon exec round trip of `true`, {sessions} sessions busy, ms"),
        &under_load,
    );
    println!(
        "{:<62} {:>9.0}",
        format!("all {sessions} sessions running, ms"),
        all_running
    );
    println!(
        "\nratio daemon exec round trip / guest own fork+exec: {:.2}x (target <= 2x)",
        pct(rtt, 0.5) / pct(guest, 0.5)
    );

    // Disconnecting stops the sessions; SIGTERM stops the daemon.
    drop(keep);
    drop(daemon);
}
