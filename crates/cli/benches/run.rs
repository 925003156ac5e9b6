//! `cargo bench -p nook-cli --bench run`: what `nook run` costs, beside a
//! bare QEMU boot of the same kernel and initramfs.
//!
//! Prints medians over `NOOK_BENCH_RUNS` runs (default 5):
//! - wall time of the whole `nook run -- true` process;
//! - a bare boot to poweroff: the same QEMU machine, kernel, initramfs and
//!   command line, with `nook.poweroff_after_init` so the agent powers off
//!   right after init (mounts and modules) instead of serving;
//! - library `Vm::start` to the agent's hello;
//! - exec round trip of `true` in a running VM, beside the guest's own
//!   fork+exec+wait of `true` (a shell loop timed with /proc/uptime);
//! - assets preparation on the cached path.
//!
//! Needs `NOOK_AGENT` (or an agent next to the binary) and prepared assets:
//! run `scripts/setup` first.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nook::{EngineChoice, Vm, VmConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runs: usize = std::env::var("NOOK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cfg = VmConfig {
        progress: false,
        ..VmConfig::default()
    };
    let assets = match nook::prepare_assets(&cfg, false) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: cannot prepare assets ({e}); run scripts/setup first");
            std::process::exit(1);
        }
    };
    let choice = nook::select_engine(cfg.engine, &cfg.home).expect("engine selection");
    let kvm_accel = matches!(
        choice,
        EngineChoice::Qemu {
            kvm_accel: true,
            ..
        }
    );
    println!("engine: {} ({})", choice.label(), choice.reason());
    println!("kernel: {}  runs: {runs}\n", assets.kernel_release);

    // Assets on the cached path.
    let mut asset_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let a = nook::prepare_assets(&cfg, false).expect("assets");
        asset_ms.push(ms(t.elapsed()));
        assert!(!a.work.downloaded && !a.work.built_initramfs);
    }

    // Whole `nook run -- true` processes.
    let nook_bin = env!("CARGO_BIN_EXE_nook");
    let mut run_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(nook_bin)
            .args(["run", "--", "true"])
            .stdin(Stdio::null())
            .status()
            .expect("spawn nook");
        run_ms.push(ms(t.elapsed()));
        assert!(st.success(), "nook run -- true failed");
    }

    // The same machine booted bare to poweroff.
    let mut raw_ms = Vec::new();
    for _ in 0..runs {
        let dir = std::env::temp_dir().join(format!("nook-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let qemu = nook_qemu::locate_qemu().expect("qemu");
        let accel = if kvm_accel {
            nook_qemu::Accel::Kvm
        } else {
            nook_qemu::Accel::Tcg
        };
        let mut qc = nook_qemu::QemuConfig::new(qemu, accel, &assets.kernel, &dir);
        qc.initrd = Some(assets.initramfs.clone());
        let words = nook::BootWords {
            poweroff_after_init: true,
            ..Default::default()
        };
        qc.cmdline = format!("{} {}", nook::BASE_CMDLINE, words.to_cmdline());
        qc.memory_mib = cfg.memory_mib;
        let t = Instant::now();
        let mut vm = nook_qemu::QemuVm::start(qc).expect("start qemu");
        let st = vm.wait_timeout(Duration::from_secs(120)).expect("wait");
        raw_ms.push(ms(t.elapsed()));
        assert!(st.is_some(), "bare boot did not power off");
        drop(vm);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Library boot to Ready, exec round trips, guest fork+exec+wait.
    let mut ready_ms = Vec::new();
    let mut rtt_ms = Vec::new();
    let mut guest_ms = Vec::new();
    for _ in 0..runs.min(3) {
        let vm = Vm::start(cfg.clone()).expect("boot");
        ready_ms.push(ms(vm.boot_time()));
        for _ in 0..3 {
            vm.exec(["true"]).output().expect("warm-up exec");
        }
        for _ in 0..30 {
            let t = Instant::now();
            let out = vm.exec(["true"]).output().expect("exec");
            rtt_ms.push(ms(t.elapsed()));
            assert!(out.status.success());
        }
        let script = "read s _ < /proc/uptime; i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; read e _ < /proc/uptime; echo $s $e";
        let out = vm.exec(["sh", "-c", script]).output().expect("guest loop");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 {
            guest_ms.push((v[1] - v[0]) * 1000.0 / 200.0);
        }
        vm.stop().expect("stop");
    }

    let run = median(run_ms);
    let raw = median(raw_ms);
    let rtt = median(rtt_ms);
    let guest = median(guest_ms);
    println!("{:<58} {:>10}", "measure (median)", "ms");
    println!("{:<58} {:>10.1}", "nook run -- true (whole process)", run);
    println!(
        "{:<58} {:>10.1}",
        "bare QEMU boot of the same kernel+initramfs to poweroff", raw
    );
    println!(
        "{:<58} {:>10.1}",
        "Vm::start to agent ready",
        median(ready_ms)
    );
    println!(
        "{:<58} {:>10.2}",
        "exec round trip of `true` in a running VM", rtt
    );
    println!(
        "{:<58} {:>10.2}",
        "guest's own fork+exec+wait of `true`", guest
    );
    println!("{:<58} {:>10.3}", "assets, cached path", median(asset_ms));
    println!();
    println!(
        "ratio nook run / bare boot:        {:.2}x (target <= 1.2x)",
        run / raw
    );
    println!(
        "ratio exec round trip / guest own: {:.2}x (target <= 2x)",
        rtt / guest
    );
}
