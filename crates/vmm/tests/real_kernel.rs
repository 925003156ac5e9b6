//! Real-kernel smoke tests: boot Debian's kernel (`NOOK_TEST_KERNEL`, a
//! bzImage) on the VMM and check its early console output, once as the
//! bzImage itself (through the host-side decompression fast path, entered
//! by PVH) and once as the `vmlinux` extracted from it. Where guest ring 0
//! is emulated the kernel never finishes booting, so the tests stop the VM
//! once the banner, command line and e820 map are out.

mod common;

use std::time::{Duration, Instant};

use common::kernel::test_kernel;
use common::{serial_lock, LeakCheck, SharedBuf};
use nook_vmm::arch::x86_64::payload::{extract_pvh_vmlinux, extract_vmlinux};
use nook_vmm::{KernelFormat, KvmConfig, KvmVm, SerialSink};

const MEM_MIB: u32 = 192;
/// Time allowed for the early console output...
const TIMEOUT: Duration = Duration::from_secs(30);
/// ...measured on this project's reference host where ring 0 is emulated,
/// whose ring-0 probe gives about this figure; a host that is slower right
/// now (e.g. loaded by parallel builds) gets proportionally more time.
const REFERENCE_PROBE_NS: f64 = 1200.0;
/// With `NOOK_TEST_SLOW=1` the bzImage test also runs where ring 0 is
/// emulated, with this much patience (its decompressor takes minutes there).
const SLOW_TIMEOUT: Duration = Duration::from_secs(1800);

/// The usable ranges Linux printed (`BIOS-e820: [mem A-B] usable`).
fn usable_ranges(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("BIOS-e820") && l.trim_end().ends_with("usable"))
        .filter_map(|l| {
            let r = l.split("[mem ").nth(1)?.split(']').next()?;
            let (a, b) = r.split_once('-')?;
            Some((
                u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()?,
                u64::from_str_radix(b.trim_start_matches("0x"), 16).ok()?,
            ))
        })
        .collect()
}

fn boot_and_check(kernel: &std::path::Path, expect: KernelFormat, timeout: Duration) {
    let leaks = LeakCheck::start();
    let serial = SharedBuf::default();
    let mut cfg = KvmConfig::new(kernel);
    let cmdline = "earlyprintk=ttyS0 console=ttyS0 nook.smoke=1 reboot=k";
    cfg.cmdline = cmdline.into();
    cfg.memory_mib = MEM_MIB;
    cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
    let t0 = Instant::now();
    let mut vm = KvmVm::start(cfg).expect("vm starts");
    assert_eq!(vm.boot_setup().format, expect);
    eprintln!("{expect:?}: start phases {:?}", vm.start_phases());
    let banner = serial.wait_for(timeout, |b| {
        String::from_utf8_lossy(b).contains("Linux version")
    });
    eprintln!("{expect:?}: banner after {:?} ({banner})", t0.elapsed());
    let done = serial.wait_for(timeout.saturating_sub(t0.elapsed()), |b| {
        let s = String::from_utf8_lossy(b);
        // The e820 map is complete once the line after it is printed.
        s.contains("Linux version") && s.contains("BIOS-e820") && s.contains("NX (Execute Disable)")
    });
    let elapsed = t0.elapsed();
    let exited = vm.wait_timeout(Duration::from_millis(1)).ok().flatten();
    vm.stop();
    drop(vm);
    let log = serial.text();
    eprintln!("--- {expect:?}: {elapsed:?}, exit {exited:?} ---\n{log}");
    assert!(done, "early boot output incomplete after {timeout:?}");
    assert!(log.contains("Linux version"));
    assert!(log.contains(cmdline), "command line echoed");
    let usable = usable_ranges(&log);
    let top = usable.iter().map(|&(_, end)| end + 1).max().unwrap_or(0);
    assert_eq!(
        top,
        u64::from(MEM_MIB) << 20,
        "e820 ends at the configured size: {usable:x?}"
    );
    let total: u64 = usable.iter().map(|&(a, b)| b + 1 - a).sum();
    assert_eq!(total, (u64::from(MEM_MIB) << 20) - (0x10_0000 - 0x9_fc00));
    leaks.finish();
}

/// How long to wait: [`TIMEOUT`], scaled up when ring 0 is slower right now
/// than on the reference host (by the ring-0 probe, or by the load average
/// when the host has more runnable threads than cores: the emulated ring 0
/// competes with them for the whole boot, not just during the probe).
fn scaled_timeout() -> Duration {
    let probe = nook_vmm::probe::measure_ring0().expect("ring-0 probe");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let scale = (probe.ns_per_iteration / REFERENCE_PROBE_NS)
        .max(load / cores)
        .clamp(1.0, 4.0);
    if scale > 1.0 {
        eprintln!(
            "ring 0 is {scale:.1}x slower than on the reference host now \
             (probe {:.0} ns, load {load:.1} on {cores} cores): waiting up to {:?}",
            probe.ns_per_iteration,
            TIMEOUT.mul_f64(scale)
        );
    }
    TIMEOUT.mul_f64(scale)
}

#[test]
fn bzimage_prints_banner_cmdline_and_e820() {
    let _l = serial_lock();
    let Some(kernel) = test_kernel() else { return };
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let image = std::fs::read(&kernel).unwrap();
    if let Err(why) = extract_pvh_vmlinux(&image) {
        // The classic path: the bzImage's own decompressor runs in guest
        // ring 0 before anything is printed, instant on hardware, many
        // minutes where ring 0 is emulated instruction by instruction.
        let probe = nook_vmm::probe::measure_ring0().expect("ring-0 probe");
        let timeout = if probe.at_hardware_speed {
            TIMEOUT
        } else if std::env::var_os("NOOK_TEST_SLOW").is_some() {
            SLOW_TIMEOUT
        } else {
            eprintln!(
                "skipping: no host-side fast path for this bzImage ({why}) and guest ring 0 \
                 is emulated here ({:.0} ns per probe iteration), so its decompressor needs \
                 minutes; set NOOK_TEST_SLOW=1 to wait",
                probe.ns_per_iteration
            );
            return;
        };
        boot_and_check(&kernel, KernelFormat::BzImage, timeout);
        return;
    }
    boot_and_check(&kernel, KernelFormat::BzImagePvh, scaled_timeout());
}

#[test]
fn pvh_vmlinux_prints_banner_cmdline_and_e820() {
    let _l = serial_lock();
    let Some(kernel) = test_kernel() else { return };
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let vmlinux = extract_vmlinux(&std::fs::read(&kernel).unwrap()).expect("extract vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, vmlinux).unwrap();
    boot_and_check(&path, KernelFormat::PvhElf, scaled_timeout());
}
