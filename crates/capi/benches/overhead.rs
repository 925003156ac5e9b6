//! `cargo bench -p nook-capi --bench overhead`: what a `nook_run` call
//! costs beyond the library's own run of the same command.
//!
//! Times `true` in a fresh VM `NOOK_BENCH_RUNS` times (default 10; one
//! warm-up run each first, which makes the configuration's template) two
//! ways, on the engine `NOOK_BENCH_ENGINE` names (default qemu):
//! - the library: `Vm::start`, `exec(["true"]).output()`, `Vm::stop`, in
//!   this process;
//! - `nook_run` from C: benches/run_loop.c built with gcc against this
//!   build's libnook.so, timing each call in its own process.
//!
//! Prints min / median / max of each and the difference of the medians.
//! Needs what the end-to-end tests need (NOOK_AGENT, qemu, the kernel) and
//! gcc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nook_lib::{EngineKind, Vm, VmConfig};

fn runs() -> usize {
    std::env::var("NOOK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// target/release/deps: where cargo built libnook.so as this bench's
/// dependency, beside the bench itself.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable");
    exe.parent().expect("deps dir").to_path_buf()
}

/// Milliseconds of each library run of `true`.
fn library_runs(engine: EngineKind, n: usize) -> Vec<f64> {
    let cfg = VmConfig {
        engine,
        progress: false,
        ..VmConfig::default()
    };
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let vm = Vm::start(cfg.clone()).expect("Vm::start");
            let out = vm.exec(["true"]).output().expect("exec");
            assert!(out.status.success(), "true failed: {:?}", out.status);
            vm.stop().expect("stop");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Milliseconds of each `nook_run` of `true`, timed in C.
fn capi_runs(engine: &str, n: usize, dir: &Path) -> Vec<f64> {
    let lib = lib_dir();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("run_loop");
    let gcc = Command::new("gcc")
        .arg(format!("-I{}", manifest.join("include").display()))
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(manifest.join("benches/run_loop.c"))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnook")
        .output()
        .expect("run gcc");
    assert!(
        gcc.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let out = Command::new(&exe)
        .arg(n.to_string())
        .arg(engine)
        .output()
        .expect("run run_loop");
    assert!(
        out.status.success(),
        "run_loop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>().expect("microseconds") / 1000.0)
        .collect()
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(z)) => (*a, *m, *z),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

fn main() {
    let n = runs();
    let engine_name = std::env::var("NOOK_BENCH_ENGINE").unwrap_or_else(|_| "qemu".into());
    let engine: EngineKind = match engine_name.parse() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bench: NOOK_BENCH_ENGINE: {e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("nook-capi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    // Warm-ups: the first run of a configuration makes its template.
    library_runs(engine, 1);
    capi_runs(&engine_name, 1, &dir);
    let lib = stats(library_runs(engine, n));
    let capi = stats(capi_runs(&engine_name, n, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "nook_run vs the library: `true` in a fresh VM, engine {engine_name}, {n} runs each\n"
    );
    println!("| path | min ms | median ms | max ms |");
    println!("|---|---|---|---|");
    for (name, (a, m, z)) in [("library Vm::start+exec+stop", lib), ("C nook_run", capi)] {
        println!("| {name} | {a:.1} | {m:.1} | {z:.1} |");
    }
    println!(
        "\nmedian difference (nook_run - library): {:+.1} ms",
        capi.1 - lib.1
    );
}
