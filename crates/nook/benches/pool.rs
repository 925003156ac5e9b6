//! Pool benchmark on the kvm engine with a synthetic guest: what
//! `Pool::acquire` of an idle VM costs, what releasing a clone costs, and
//! how long the filler takes to have the next clone idle (a restore into a
//! ready KVM VM). Prints a table.
//!
//! `cargo bench -p nook --bench pool [-- RUNS]` (default 200).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nook::{Pool, PoolConfig};
use support::kvm_snapshot::idle_kvm_snapshot;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn row(name: &str, v: &mut [Duration]) {
    println!(
        "| {name} | {} | {} | {} | {} |",
        us(pct(v, 0.5)),
        us(pct(v, 0.99)),
        us(pct(v, 0.0)),
        us(pct(v, 1.0)),
    );
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("idle");
    if idle_kvm_snapshot(&snap, 256).is_none() {
        return;
    }
    let mut cfg = PoolConfig::new(&snap);
    cfg.min = 1;
    cfg.max = 4;
    let pool = Pool::new(cfg).unwrap();
    let ready = |pool: &Pool| {
        let s = pool.stats();
        s.idle >= 1 && s.kvm_ready >= 1 && s.in_use == 0
    };
    let wait = |pool: &Pool| {
        let t = Instant::now();
        while !ready(pool) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "pool never refilled: {:?} {:?}",
                pool.stats(),
                pool.last_error()
            );
            std::hint::spin_loop();
        }
        t.elapsed()
    };
    wait(&pool);
    let (mut acquire, mut release, mut refill) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let vm = pool.acquire(Duration::from_secs(10)).unwrap();
        acquire.push(t.elapsed());
        let t = Instant::now();
        drop(vm);
        release.push(t.elapsed());
        refill.push(wait(&pool));
    }
    let s = pool.stats();
    println!("256 MiB synthetic guest on kvm, pool min 1 max 4, {runs} rounds (acquire, release, wait for the refill)");
    println!("| step | median | p99 | min | max |");
    println!("|---|---|---|---|---|");
    row("`Pool::acquire` of an idle VM", &mut acquire);
    row("release (drop the `PooledVm`)", &mut release);
    row("refill: next clone idle + a KVM VM ready", &mut refill);
    println!(
        "restored {} clones; {} KVM VMs of discarded clones reused",
        s.restored, s.kvm_reused
    );
}
