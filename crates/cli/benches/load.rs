//! `cargo bench -p nook-cli --bench load`: nook under load, every output
//! checked byte for byte. Prints a table:
//! - `NOOK_LOAD_RUNS` (default 20) concurrent `nook run`, each printing
//!   its own 2000 lines;
//! - `NOOK_LOAD_SESSIONS` (default 10) concurrent sessions with
//!   `NOOK_LOAD_EXECS` (default 50) `nook exec` each;
//! - `NOOK_LOAD_SEQUENTIAL` (default 500) sequential VMs started, run and
//!   stopped by the library in this process, with this process's threads
//!   and file descriptors, QEMU processes and run directories counted
//!   before and after (a leak fails the bench).
//!
//! Wall time and the peak of host memory in use (MemTotal - MemAvailable,
//! sampled every 50 ms, above the level before the phase) per phase. Needs
//! what `nook run` needs: run `scripts/setup` first, with `NOOK_AGENT` set.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nook::{Vm, VmConfig};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn nook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nook"));
    c.env_remove("NOOK_LOG").stdin(Stdio::null());
    c
}

/// Host memory in use, KiB.
fn used_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// Samples host memory while `f` runs; returns `f`'s result, the wall time
/// and the peak rise in MiB.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, u64) {
    let base = used_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(used_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t0 = Instant::now();
    let out = f();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let rise = peak.load(Ordering::Relaxed).saturating_sub(base) / 1024;
    (out, took, rise)
}

/// The lines `seq FROM TO` prints.
fn seq_text(from: usize, to: usize) -> String {
    (from..=to).map(|i| format!("{i}\n")).collect()
}

fn check(what: &str, out: &Output, want: &str) -> bool {
    let ok = out.status.success() && out.stdout == want.as_bytes();
    if !ok {
        eprintln!(
            "{what}: status {:?}, {} bytes of stdout (want {}), stderr: {}",
            out.status,
            out.stdout.len(),
            want.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok
}

fn concurrent_runs(n: usize) -> usize {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let from = i * 10_000;
                let out = nook()
                    .args([
                        "run",
                        "--",
                        "seq",
                        &from.to_string(),
                        &(from + 1999).to_string(),
                    ])
                    .output()
                    .expect("start nook");
                check(&format!("run {i}"), &out, &seq_text(from, from + 1999))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count()
}

fn concurrent_sessions(n: usize, execs: usize) -> usize {
    let tag = std::process::id();
    let handles: Vec<_> = (0..n)
        .map(|s| {
            std::thread::spawn(move || {
                let name = format!("load-{tag}-{s}");
                let started = nook().args(["start", "--name", &name]).output().unwrap();
                if !check(&format!("start {name}"), &started, &format!("{name}\n")) {
                    return 0;
                }
                let mut good = 0;
                for e in 0..execs {
                    let word = format!("{s}-{e}");
                    let out = nook()
                        .args(["exec", &name, "--", "echo", &word])
                        .output()
                        .unwrap();
                    if check(&format!("exec {word}"), &out, &format!("{word}\n")) {
                        good += 1;
                    }
                }
                let _ = nook().args(["rm", "-f", &name]).output();
                good
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// QEMU processes of this process's VMs (their command line names a run
/// directory `nook-PID-N`); others' QEMUs on a shared machine do not count.
fn qemu_count() -> usize {
    let mine = format!("nook-{}-", std::process::id());
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("qemu-system") && c.contains(&mine)
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

fn my_run_dirs() -> usize {
    let prefix = format!("nook-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

#[derive(Debug, PartialEq, Eq)]
struct Census {
    fds: usize,
    threads: usize,
    qemu: usize,
    run_dirs: usize,
}

fn census() -> Census {
    Census {
        fds: count_dir("/proc/self/fd"),
        threads: count_dir("/proc/self/task"),
        qemu: qemu_count(),
        run_dirs: my_run_dirs(),
    }
}

/// `n` VMs one after another in this process: start, exec, stop.
fn sequential(n: usize) -> (usize, Census, Census) {
    let cfg = VmConfig {
        progress: false,
        ..VmConfig::default()
    };
    // One VM first, so that lazily made process-wide things (the template,
    // helper threads) exist before the count.
    if let Ok(vm) = Vm::start(cfg.clone()) {
        let _ = vm.stop();
    }
    // The same settling time as before the count after the loop: a stopped
    // VM's teardown (QEMU reaped, its threads ending) is prompt, not instant.
    std::thread::sleep(Duration::from_secs(1));
    let before = census();
    let mut good = 0;
    for i in 0..n {
        let Ok(vm) = Vm::start(cfg.clone()) else {
            eprintln!("sequential {i}: start failed");
            continue;
        };
        let word = format!("seq-{i}");
        match vm.exec(["echo", &word]).output() {
            Ok(o) if o.stdout == format!("{word}\n").as_bytes() => good += 1,
            Ok(o) => eprintln!(
                "sequential {i}: stdout {:?}",
                String::from_utf8_lossy(&o.stdout)
            ),
            Err(e) => eprintln!("sequential {i}: {e}"),
        }
        let _ = vm.stop();
    }
    // Stopped QEMU processes are reaped promptly, not instantly.
    std::thread::sleep(Duration::from_secs(1));
    (good, before, census())
}

fn main() {
    let runs = env_count("NOOK_LOAD_RUNS", 20);
    let sessions = env_count("NOOK_LOAD_SESSIONS", 10);
    let execs = env_count("NOOK_LOAD_EXECS", 50);
    let seq_n = env_count("NOOK_LOAD_SEQUENTIAL", 500);
    let mut failed = false;
    println!(
        "{:<44} {:>10} {:>12} {:>16}",
        "phase", "wall s", "ok", "peak host MiB"
    );

    let (good, took, mib) = measured(|| concurrent_runs(runs));
    println!(
        "{:<44} {:>10.1} {:>12} {:>16}",
        format!("{runs} concurrent nook run (2000 lines each)"),
        took.as_secs_f64(),
        format!("{good}/{runs}"),
        mib
    );
    failed |= good != runs;

    let (good, took, mib) = measured(|| concurrent_sessions(sessions, execs));
    println!(
        "{:<44} {:>10.1} {:>12} {:>16}",
        format!("{sessions} sessions x {execs} nook exec"),
        took.as_secs_f64(),
        format!("{good}/{}", sessions * execs),
        mib
    );
    failed |= good != sessions * execs;

    let ((good, before, after), took, mib) = measured(|| sequential(seq_n));
    println!(
        "{:<44} {:>10.1} {:>12} {:>16}",
        format!("{seq_n} sequential VMs (library)"),
        took.as_secs_f64(),
        format!("{good}/{seq_n}"),
        mib
    );
    println!("  before: {before:?}\n  after:  {after:?}");
    failed |= good != seq_n;
    if before != after {
        println!("  LEAK: the counts differ");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}
