//! Snapshot benchmark: snapshot time and file size of a mostly-zero guest;
//! restore latency (the call, and the call to the first guest instruction)
//! and release time, with a new KVM VM per restore, with KVM VMs made
//! ahead of time ([`KvmRestorer::prepare`]) and with KVM VMs handed back by
//! ended clones; and the memory cost of idle VMs restored from one
//! snapshot.
//!
//! `cargo bench -p nook-vmm --bench snapshot [-- RUNS]` (default 50 runs);
//! prints a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::Guest;
use iced_x86::code_asm::{al, dx};
use nook_vmm::{AfterSnapshot, KvmConfig, KvmRestoreConfig, KvmRestorer, KvmVm, SerialSink};
use vm_memory::{Bytes, GuestAddress};

/// Records when the first byte arrives.
#[derive(Clone, Default)]
struct FirstWrite(Arc<OnceLock<Instant>>);

impl Write for FirstWrite {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.set(Instant::now());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FirstWrite {
    fn wait(&self) -> Instant {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = self.0.get() {
                return *t;
            }
            assert!(Instant::now() < end, "guest never wrote");
            std::hint::spin_loop();
        }
    }
}

/// `l: out 0x3f8, al; jmp l` — every instruction after a restore shows.
fn chatty_guest(dir: &Path) -> std::path::PathBuf {
    let mut g = Guest::new();
    let mut l = g.a.create_label();
    g.a.mov(dx, 0x3f8u32).unwrap();
    g.a.set_label(&mut l).unwrap();
    g.a.out(dx, al).unwrap();
    g.a.jmp(l).unwrap();
    g.write(dir)
}

/// `cli; l: hlt; jmp l` after one byte.
fn idle_guest(dir: &Path) -> std::path::PathBuf {
    let mut g = Guest::new();
    g.serial_byte(b'i');
    let mut l = g.a.create_label();
    g.a.set_label(&mut l).unwrap();
    g.a.hlt().unwrap();
    g.a.jmp(l).unwrap();
    g.write(dir)
}

fn start(kernel: &Path, memory_mib: u32, first: &FirstWrite) -> KvmVm {
    let mut cfg = KvmConfig::new(kernel);
    cfg.memory_mib = memory_mib;
    cfg.serial = SerialSink::Writer(Box::new(first.clone()));
    let vm = KvmVm::start(cfg).unwrap();
    first.wait();
    eprintln!(
        "(fresh boot phases, for comparison: {:?})",
        vm.start_phases()
    );
    vm
}

/// Where a restore's KVM VM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Made by the restore ([`KvmVm::restore`]).
    New,
    /// Made ahead by [`KvmRestorer::prepare`], never used before.
    Ready,
    /// Handed back by the previous clone (restore, stop, drop, repeat).
    Reused,
}

/// Restores `path` `runs` times with KVM VMs from `mode`; prints a row and
/// the mean of each restore phase.
fn restore_row(path: &Path, memory_mib: u32, mode: Mode, runs: usize) {
    let restorer = KvmRestorer::open(path).unwrap();
    match mode {
        Mode::New => {}
        Mode::Ready => restorer.prepare(runs).unwrap(),
        Mode::Reused => restorer.prepare(1).unwrap(),
    }
    let (mut calls, mut firsts, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    let mut phases: Vec<(&'static str, Duration)> = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..runs {
        let first = FirstWrite::default();
        let cfg = KvmRestoreConfig {
            serial: SerialSink::Writer(Box::new(first.clone())),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut vm = match mode {
            Mode::New => KvmVm::restore(path, cfg).unwrap(),
            Mode::Ready | Mode::Reused => restorer.restore(cfg).unwrap(),
        };
        calls.push(t0.elapsed());
        firsts.push(first.wait() - t0);
        for (i, (name, d)) in vm.start_phases().iter().enumerate() {
            match phases.get_mut(i) {
                Some(p) => p.1 += *d,
                None => phases.push((name, *d)),
            }
        }
        vm.stop();
        if mode == Mode::Ready {
            // Kept until the end, so that every restore takes a VM that
            // never ran.
            kept.push(vm);
        } else {
            let t = Instant::now();
            drop(vm);
            releases.push(t.elapsed());
        }
    }
    let release = if releases.is_empty() {
        "(kept)".to_string()
    } else {
        format!(
            "{} / {}",
            ms(pct(&mut releases, 0.5)),
            ms(pct(&mut releases, 0.99))
        )
    };
    let what = match mode {
        Mode::New => "new per restore",
        Mode::Ready => "made ahead",
        Mode::Reused => "reused from the last clone",
    };
    println!(
        "| {memory_mib} MiB, spinning | {what} | {} / {} | {} / {} | {release} |",
        ms(pct(&mut calls, 0.5)),
        ms(pct(&mut calls, 0.99)),
        ms(pct(&mut firsts, 0.5)),
        ms(pct(&mut firsts, 0.99)),
    );
    let avg: Vec<String> = phases
        .iter()
        .map(|(n, d)| format!("{n} {:.0} µs", d.as_secs_f64() * 1e6 / runs as f64))
        .collect();
    println!("|  | phases (mean) | {} | | |", avg.join(", "));
    drop(kept);
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
}

/// (Rss, Pss) of this process in bytes.
fn rss_pss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("Rss:"), field("Pss:"))
}

fn main() {
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let chatty = chatty_guest(dir.path());

    println!("| guest | snapshot (median of 5) | file apparent | file allocated |");
    println!("|---|---|---|---|");
    let mut snapshots = Vec::new();
    for memory_mib in [256u32, 1024] {
        let path = dir.path().join(format!("chatty-{memory_mib}.snap"));
        let mut vm = start(&chatty, memory_mib, &FirstWrite::default());
        let mut snap_times = Vec::new();
        let mut info = None;
        for i in 0..5 {
            let then = if i == 4 {
                AfterSnapshot::Stop
            } else {
                AfterSnapshot::Resume
            };
            let t = Instant::now();
            let inf = vm.snapshot(&path, then).unwrap();
            snap_times.push(t.elapsed());
            info = Some(inf);
        }
        drop(vm);
        let info = info.unwrap();
        println!(
            "| {memory_mib} MiB, spinning | {} | {} | {} ({} pages written) |",
            ms(pct(&mut snap_times, 0.5)),
            mib(info.apparent_bytes),
            mib(info.allocated_bytes),
            info.pages_written,
        );
        snapshots.push((memory_mib, path));
    }
    println!();
    println!("| guest | KVM VM | restore call (median / p99) | restore → first guest instruction (median / p99) | release: drop (median / p99) |");
    println!("|---|---|---|---|---|");
    for (memory_mib, path) in &snapshots {
        for mode in [Mode::New, Mode::Ready, Mode::Reused] {
            restore_row(path, *memory_mib, mode, runs);
        }
    }

    // Memory of idle clones: a 256 MiB guest with 32 MiB of data.
    let idle = idle_guest(dir.path());
    let path = dir.path().join("idle.snap");
    let mut vm = start(&idle, 256, &FirstWrite::default());
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    vm.guest_memory()
        .write_slice(&data, GuestAddress(16 << 20))
        .unwrap();
    vm.snapshot(&path, AfterSnapshot::Stop).unwrap();
    drop(vm);
    drop(data);
    // Each clone's working set: the guest's 32 MiB, read through its
    // mapping as the guest would.
    let touch = |vm: &KvmVm| {
        let mut buf = vec![0u8; 1 << 20];
        for mb in 0..32u64 {
            vm.guest_memory()
                .read_slice(&mut buf, GuestAddress((16 + mb) << 20))
                .unwrap();
        }
    };
    let (r0, p0) = rss_pss();
    let mut clones = Vec::new();
    let one = KvmVm::restore(&path, KvmRestoreConfig::default()).unwrap();
    touch(&one);
    clones.push(one);
    std::thread::sleep(Duration::from_millis(20));
    let (r1, p1) = rss_pss();
    for _ in 1..10 {
        let vm = KvmVm::restore(&path, KvmRestoreConfig::default()).unwrap();
        touch(&vm);
        clones.push(vm);
    }
    std::thread::sleep(Duration::from_millis(20));
    let (r10, p10) = rss_pss();
    println!();
    println!("| idle 256 MiB clones, 32 MiB working set each | RSS added | PSS added |");
    println!("|---|---|---|");
    println!(
        "| 1 clone | {} | {} |",
        mib(r1.saturating_sub(r0)),
        mib(p1.saturating_sub(p0))
    );
    println!(
        "| 10 clones (total) | {} | {} |",
        mib(r10.saturating_sub(r0)),
        mib(p10.saturating_sub(p0))
    );
    println!(
        "| 10 clones (per clone) | {} | {} |",
        mib(r10.saturating_sub(r0) / 10),
        mib(p10.saturating_sub(p0) / 10)
    );
    println!(
        "| 10 clones / 1 clone (PSS) | | {:.2}x |",
        p10.saturating_sub(p0) as f64 / p1.saturating_sub(p0).max(1) as f64
    );
    for mut vm in clones {
        vm.stop();
    }
}
