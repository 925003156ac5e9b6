//! Every fuzz target runs on its seed corpus (`fuzz/seeds/<target>/`) and
//! then on libFuzzer's mutations for a few seconds (NOOK_FUZZ_SECONDS,
//! default 5) without a crash. The binaries here are built by `cargo test`
//! without coverage instrumentation (mutation is blind); `scripts/fuzz`
//! builds instrumented ones for real fuzzing.

use std::path::Path;
use std::process::Command;

const TARGETS: &[&str] = &[
    "frames",
    "snapshot_header",
    "virtio_queues",
    "image_manifests",
    "tar_layers",
    "session_lines",
    "daemon_lines",
];

fn binary(target: &str) -> &'static str {
    match target {
        "frames" => env!("CARGO_BIN_EXE_frames"),
        "snapshot_header" => env!("CARGO_BIN_EXE_snapshot_header"),
        "virtio_queues" => env!("CARGO_BIN_EXE_virtio_queues"),
        "image_manifests" => env!("CARGO_BIN_EXE_image_manifests"),
        "tar_layers" => env!("CARGO_BIN_EXE_tar_layers"),
        "session_lines" => env!("CARGO_BIN_EXE_session_lines"),
        "daemon_lines" => env!("CARGO_BIN_EXE_daemon_lines"),
        other => panic!("no fuzz target {other}"),
    }
}

#[test]
fn every_target_survives_its_seeds_and_a_short_run() {
    let seconds = std::env::var("NOOK_FUZZ_SECONDS").unwrap_or_else(|_| "5".into());
    let seeds_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut failed = Vec::new();
    for t in TARGETS {
        let seeds = seeds_root.join(t);
        assert!(
            std::fs::read_dir(&seeds).is_ok_and(|d| d.count() > 0),
            "no seeds in {}",
            seeds.display()
        );
        // New inputs go to a scratch corpus; the checked-in seeds are read only.
        let scratch = tempfile::tempdir().unwrap();
        let out = Command::new(binary(t))
            .arg(format!("-max_total_time={seconds}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", scratch.path().display()))
            .arg(scratch.path())
            .arg(&seeds)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Done ").and_then(|r| r.split(' ').next()))
            .unwrap_or("?")
            .to_string();
        eprintln!(
            "{t}: {runs} runs in {seconds} s, exit {:?}",
            out.status.code()
        );
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- {t} ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            failed.push(*t);
        }
    }
    assert!(failed.is_empty(), "fuzz targets failed: {failed:?}");
}
