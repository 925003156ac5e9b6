//! Boot-time benchmark of the QEMU engine under TCG: boots a busybox guest
//! that says hello on the agent channel and powers off, several times per
//! variant of the command line, and prints a table.
//!
//! ```text
//! NOOK_TEST_KERNEL=... NOOK_TEST_MODULES=... \
//!     cargo run --release -p nook-qemu --example boot_time -- [RUNS]
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use nook_qemu::{QemuConfig, QemuVm};
use support::*;

const INIT: &str = r#"
port=$(find_port nook.agent)
echo hello >$port
poweroff -f
"#;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let (Some((qemu, kernel)), Some(modules)) = (
        qemu_and_kernel(),
        env_path("NOOK_TEST_MODULES", "lib/modules/<release>"),
    ) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("initrd.cpio");
    std::fs::write(
        &initrd,
        busybox_initramfs(&modules, &format!("{INIT_PRELUDE}{INIT}"))?,
    )?;
    type Tweak = fn(&mut QemuConfig);
    let variants: [(&str, Tweak); 4] = [
        ("default (cpu max, sandbox, rng)", |_| {}),
        ("no sandbox", |c| c.sandbox = false),
        ("no rng", |c| c.rng = false),
        ("cpu qemu64", |c| c.cpu_model = Some("qemu64".into())),
    ];
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>10}",
        "variant", "start", "agent line", "poweroff", "qemu cpu"
    );
    for (name, tweak) in variants {
        for _ in 0..runs {
            let mut cfg = tcg_config(&qemu, &kernel, dir.path());
            cfg.initrd = Some(initrd.clone());
            tweak(&mut cfg);
            let cpu0 = children_cpu_secs();
            let t0 = Instant::now();
            let mut vm = QemuVm::start(cfg)?;
            let start = t0.elapsed();
            let chan = vm
                .take_agent_channel()
                .ok_or_else(|| anyhow::anyhow!("no agent channel"))?;
            chan.set_read_timeout(Some(Duration::from_secs(120)))?;
            let mut line = String::new();
            if BufReader::new(chan).read_line(&mut line)? == 0 {
                return Err(vm.boot_failure(t0.elapsed()).into());
            }
            let hello = t0.elapsed();
            if vm.wait_timeout(Duration::from_secs(120))?.is_none() {
                return Err(vm.boot_failure(t0.elapsed()).into());
            }
            let off = t0.elapsed();
            println!(
                "{name:<34} {:>8.1}ms {:>11.2}s {:>11.2}s {:>9.2}s",
                start.as_secs_f64() * 1e3,
                hello.as_secs_f64(),
                off.as_secs_f64(),
                children_cpu_secs() - cpu0
            );
        }
    }
    Ok(())
}

/// User + system CPU time of reaped children (from /proc/self/stat), which
/// unlike wall time does not depend on what else the host is running.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: field 14 (cutime) and 15 (cstime), 0-based
    // 13 and 14 counting from the state field.
    let ticks: f64 = [13, 14]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
