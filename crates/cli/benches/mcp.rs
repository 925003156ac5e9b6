//! `cargo bench -p nook-cli --bench mcp`: what an MCP tool call costs
//! through `nook mcp` on the qemu engine, measured as a client sees it
//! (request line written to the server's stdin until the result line is
//! read from its stdout):
//! - `run` of `true` with the configuration's template warm (restore, exec,
//!   stop per call);
//! - `sandbox_create` (a session host restoring the template), then
//!   `sandbox_exec` of `true` in it, and `file_write` + `file_read` of 4 KiB;
//! - `sandbox_destroy`.
//!
//! Prints min / median / p90 over `NOOK_BENCH_RUNS` calls (default 20).
//! Needs `NOOK_AGENT` and prepared assets: run `scripts/setup` first.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../tests/common/mod.rs"]
mod common;
use common::mcp::McpClient;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// min, median and p90 of `v`, in ms.
fn row(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<34} {:>5} {:>9.1} {:>9.1} {:>9.1}",
        v.len(),
        v[0],
        at(0.5),
        at(0.9)
    );
}

fn timed(c: &mut McpClient, tool: &str, args: Value) -> (f64, Value) {
    let t = Instant::now();
    let out = c.ok(tool, args);
    (ms(t.elapsed()), out)
}

fn main() {
    if !common::ready() {
        std::process::exit(1);
    }
    let runs: usize = std::env::var("NOOK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(1);
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    // Makes the template when there is none yet.
    c.ok("run", json!({"command": "true"}));
    println!("nook mcp --engine qemu, {runs} calls each (ms)\n");
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9}",
        "tool call", "n", "min", "median", "p90"
    );
    let run: Vec<f64> = (0..runs)
        .map(|_| timed(&mut c, "run", json!({"command": "true"})).0)
        .collect();
    row("run `true` (template warm)", run);
    let (create_ms, created) = timed(&mut c, "sandbox_create", json!({}));
    let id = created["sandbox_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    row("sandbox_create", vec![create_ms]);
    let exec: Vec<f64> = (0..runs)
        .map(|_| {
            timed(
                &mut c,
                "sandbox_exec",
                json!({"sandbox_id": id, "command": "true"}),
            )
            .0
        })
        .collect();
    row("sandbox_exec `true`", exec);
    let data = "x".repeat(4096);
    let files: Vec<f64> = (0..runs)
        .map(|i| {
            let path = format!("/tmp/bench-{i}");
            let (w, _) = timed(
                &mut c,
                "file_write",
                json!({"sandbox_id": id, "path": path, "content": data}),
            );
            let (r, _) = timed(&mut c, "file_read", json!({"sandbox_id": id, "path": path}));
            w + r
        })
        .collect();
    row("file_write + file_read 4 KiB", files);
    let (destroy_ms, _) = timed(&mut c, "sandbox_destroy", json!({"sandbox_id": id}));
    row("sandbox_destroy", vec![destroy_ms]);
    let _ = c.disconnect();
}
