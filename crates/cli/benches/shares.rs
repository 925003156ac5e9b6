//! `cargo bench -p nook-cli --bench shares`: host directory share
//! throughput inside the guest, beside the guest's own tmpfs and the same
//! work run directly on the host, in the same host directory.
//!
//! Workloads (busybox in the guest, timed with /proc/uptime, 10 ms
//! resolution):
//! - sequential write of 1 GiB (`dd bs=1M conv=fsync`);
//! - sequential read of it back (`dd bs=1M`), after dropping the guest's
//!   page cache (the host's stays warm: this measures the transport);
//! - creating 10,000 small files (a shell loop of `echo x > fN`).
//!
//! Needs `NOOK_AGENT` (or an agent next to the binary) and prepared assets:
//! run `scripts/setup` first. `NOOK_BENCH_DIR` picks the host directory
//! (default: the system temp dir).

use std::process::Command;

use nook::{EngineKind, ShareConfig, Vm, VmConfig};

const SCRIPT: &str = r#"
now() { read u _ < /proc/uptime; echo $u; }
T=$1
a=$(now); dd if=/dev/zero of=$T/big bs=1M count=1024 conv=fsync 2>/dev/null || echo DD-WRITE-FAILED >&2; b=$(now)
sync; [ "$2" = drop ] && echo 3 > /proc/sys/vm/drop_caches
c=$(now); dd if=$T/big of=/dev/null bs=1M 2>/dev/null || echo DD-READ-FAILED >&2; d=$(now)
rm -f $T/big
mkdir -p $T/small
e=$(now); i=0; while [ $i -lt 10000 ]; do echo x > $T/small/f$i; i=$((i+1)); done; f=$(now)
rm -rf $T/small
echo "$a $b $c $d $e $f"
"#;

/// (write s, read s, create s) from the script's six uptime stamps.
fn parse(stdout: &[u8]) -> Option<(f64, f64, f64)> {
    let text = String::from_utf8_lossy(stdout);
    let t: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (t.len() == 6).then(|| (t[1] - t[0], t[3] - t[2], t[5] - t[4]))
}

fn row(name: &str, r: Option<(f64, f64, f64)>) {
    match r {
        Some((w, rd, c)) => println!(
            "{name:<22} {:>12.0} {:>12.0} {:>14.0}   ({w:.2} s / {rd:.2} s / {c:.2} s)",
            1024.0 / w,
            1024.0 / rd,
            10_000.0 / c
        ),
        None => println!("{name:<22} failed"),
    }
}

fn main() {
    let base = std::env::var_os("NOOK_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("nook-share-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");

    let cfg = VmConfig {
        engine: EngineKind::Qemu,
        memory_mib: 2048,
        progress: false,
        shares: vec![ShareConfig {
            host_dir: dir.clone(),
            guest_path: "/mnt/share".into(),
            read_only: false,
        }],
        ..VmConfig::default()
    };
    let vm = match Vm::start(cfg) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("bench: cannot boot ({e}); run scripts/setup first");
            std::process::exit(1);
        }
    };
    println!("engine: {} ({})", vm.engine().label(), vm.engine().reason());
    println!("host dir: {}", dir.display());
    let guest = |target: &str| {
        let out = vm
            .exec(["sh", "-c", SCRIPT, "sh", target, "drop"])
            .output()
            .expect("exec");
        if !out.stderr.is_empty() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        parse(&out.stdout)
    };
    let share = guest("/mnt/share");
    let tmpfs = guest("/tmp");
    let _ = vm.stop();
    // The same script on the host, in the shared directory itself (no
    // cache dropping: that would disturb the whole host).
    let host = Command::new("sh")
        .args(["-c", SCRIPT, "sh"])
        .arg(&dir)
        .arg("keep")
        .output()
        .ok()
        .and_then(|o| parse(&o.stdout));
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>14}",
        "", "write MiB/s", "read MiB/s", "create files/s"
    );
    row("guest, virtio-fs share", share);
    row("guest, tmpfs", tmpfs);
    row("host, same directory", host);
}
