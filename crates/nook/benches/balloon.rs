//! Balloon benchmark on the qemu engine (TCG here): a guest of 640 MiB
//! writes 400 MiB into a tmpfs and deletes it; then the balloon inflates by
//! 300 MiB (free page reporting off), or free page reporting alone runs.
//! Prints the QEMU process's RSS before and after and how long it took.
//! Needs `NOOK_AGENT` (as the tests).
//!
//! `cargo bench -p nook --bench balloon`

use std::time::{Duration, Instant};

use nook::{BalloonConfig, EngineKind, Vm, VmConfig};

const MIB: u64 = 1 << 20;

fn sh(vm: &Vm, script: &str) {
    let out = vm.exec(["sh", "-c", script]).output().expect("exec");
    assert!(out.status.success(), "{script}");
}

fn rss_mib(vm: &Vm) -> u64 {
    vm.memory_stats()
        .ok()
        .and_then(|s| s.host_rss_bytes)
        .unwrap_or(0)
        / MIB
}

/// Boots, touches 400 MiB and frees it; returns the VM and the RSS with
/// the data resident.
fn touched_vm(balloon: BalloonConfig) -> (Vm, u64) {
    let cfg = VmConfig {
        engine: EngineKind::Qemu,
        memory_mib: 640,
        progress: false,
        balloon: Some(balloon),
        ..VmConfig::default()
    };
    let vm = Vm::start(cfg).expect("boot");
    sh(
        &vm,
        "mkdir -p /mnt/fill && mount -t tmpfs -o size=450m fill /mnt/fill && \
         dd if=/dev/zero of=/mnt/fill/data bs=1M count=400 2>/dev/null",
    );
    let peak = rss_mib(&vm);
    sh(&vm, "rm /mnt/fill/data && umount /mnt/fill");
    (vm, peak)
}

/// Polls every 20 ms until `done` or a minute passed; the time it took.
fn until(mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if done() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn show(d: Option<Duration>) -> String {
    d.map_or("did not finish in 60 s".into(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

fn main() {
    if std::env::var_os("NOOK_AGENT").is_none() {
        eprintln!("skipping: set NOOK_AGENT to a static nook-agent");
        return;
    }
    println!("| case | qemu RSS with 400 MiB | after | time |");
    println!("|---|---|---|---|");

    let plain = BalloonConfig {
        free_page_reporting: false,
        stats_interval_s: 1,
    };
    let (vm, peak) = touched_vm(plain);
    let freed = rss_mib(&vm);
    vm.set_balloon(300).expect("inflate");
    let took = until(|| vm.memory_stats().is_ok_and(|s| s.balloon_mib >= 300));
    println!(
        "| free in the guest, no balloon | {peak} MiB | {freed} MiB | - |\n\
         | inflate 300 MiB | {peak} MiB | {} MiB | {} |",
        rss_mib(&vm),
        show(took)
    );
    drop(vm);

    let (vm, peak) = touched_vm(BalloonConfig::reporting());
    let took = until(|| rss_mib(&vm) + 300 <= peak);
    println!(
        "| free page reporting (300 MiB back) | {peak} MiB | {} MiB | {} |",
        rss_mib(&vm),
        show(took)
    );
}
