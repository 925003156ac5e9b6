//! Boot benchmark: nook's VMM against `qemu-system-x86_64 -M microvm`, both
//! running the same tiny PVH guest ELF that writes one byte to COM1 and
//! then powers off (port 0x600 on nook; on QEMU, which ignores that port,
//! the following `ud2` triple-faults and `-no-reboot` ends it).
//!
//! `cargo bench -p nook-vmm --bench boot [-- ITERATIONS]`; prints medians.
//! The whole-process row runs the `nook` binary (`cargo build --release -p
//! nook-cli` first, or set `NOOK_BIN`); the close rows show where the
//! in-process teardown goes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::SharedBuf;
use nook_vmm::{ExitReason, KvmConfig, KvmVm, SerialSink};
use vm_memory::{GuestMemory, GuestMemoryRegion};

const MEM_MIB: u32 = 128;
const LOAD: u64 = 0x10_0000;

/// A 32-bit PVH guest: out 0x3f8,'X'; out 0x600,0x34; ud2.
fn pvh_guest() -> Vec<u8> {
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xb0, b'X', // mov al, 'X'
        0xee, // out dx, al
        0xba, 0x00, 0x06, 0x00, 0x00, // mov edx, 0x600
        0xb0, 0x34, // mov al, 0x34
        0xee, // out dx, al
        0x0f, 0x0b, // ud2
    ];
    // Xen PVH note: namesz 4, descsz 4, type 18 (PHYS32_ENTRY), "Xen\0", entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD as u32).to_le_bytes());
    let mut elf = common::elf64(LOAD, &[(LOAD, code)]);
    // Append a PT_NOTE program header: rebuild with two headers by hand.
    let phnum = 2u16;
    let phoff = 0x40usize;
    let data_off = phoff + 0x38 * 2;
    let code_off = data_off;
    let note_off = code_off + code.len();
    elf.truncate(0x40);
    elf[56..58].copy_from_slice(&phnum.to_le_bytes());
    let ph = |typ: u32, off: usize, addr: u64, len: usize| {
        let mut p = vec![0u8; 0x38];
        p[0..4].copy_from_slice(&typ.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..16].copy_from_slice(&(off as u64).to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        p[40..48].copy_from_slice(&(len as u64).to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    elf.extend(ph(1, code_off, LOAD, code.len()));
    elf.extend(ph(4, note_off, 0, note.len()));
    elf.extend_from_slice(code);
    elf.extend_from_slice(&note);
    elf
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident bytes of the guest memory mappings (pages the guest touched or
/// the VMM wrote while loading).
fn guest_resident(vm: &KvmVm) -> u64 {
    let mem = vm.guest_memory();
    let mut total = 0;
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `host..host+len` is one live mapping owned by the VM's
        // guest memory; `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if r == 0 {
            total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * 4096;
        }
    }
    total
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    first: Vec<f64>,
    exit: Vec<f64>,
    teardown: Vec<f64>,
    total: Vec<f64>,
    rss: Vec<f64>,
}

fn bench_nook(kernel: &std::path::Path, n: usize) -> Row {
    let mut row = Row {
        first: vec![],
        exit: vec![],
        teardown: vec![],
        total: vec![],
        rss: vec![],
    };
    for i in 0..n + 1 {
        let serial = SharedBuf::default();
        let mut cfg = KvmConfig::new(kernel);
        cfg.memory_mib = MEM_MIB;
        cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        let mut vm = KvmVm::start(cfg).expect("start");
        while serial.contents().is_empty() {
            std::hint::spin_loop();
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("no output");
            }
        }
        let t1 = t0.elapsed();
        assert_eq!(vm.wait().expect("wait"), ExitReason::PowerOff);
        let t2 = t0.elapsed();
        let (rss1, guest) = (rss_bytes(), guest_resident(&vm));
        let rss = rss1.saturating_sub(rss0).saturating_sub(guest);
        if i == 1 {
            eprintln!("start phases: {:?}", vm.start_phases());
        }
        if i == 0 {
            // Later VMs reuse heap and stacks freed by earlier ones, so the
            // first VM of the process is the honest overhead figure.
            println!(
                "first VM: rss before {} KiB, after {} KiB, guest-resident {} KiB => vmm overhead {} KiB",
                rss0 / 1024,
                rss1 / 1024,
                guest / 1024,
                rss / 1024
            );
        }
        drop(vm);
        let t3 = t0.elapsed();
        if i == 0 {
            continue; // warm-up
        }
        row.first.push(t1.as_secs_f64() * 1e3);
        row.exit.push(t2.as_secs_f64() * 1e3);
        row.teardown.push((t3 - t2).as_secs_f64() * 1e3);
        row.total.push(t3.as_secs_f64() * 1e3);
        row.rss.push(rss as f64 / 1024.0);
    }
    row
}

fn bench_qemu(kernel: &std::path::Path, n: usize) -> Option<Row> {
    let mut row = Row {
        first: vec![],
        exit: vec![],
        teardown: vec![],
        total: vec![],
        rss: vec![],
    };
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            // `-cpu host` alone trips over an MSR this nested KVM refuses.
            .args([
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
            ])
            .arg(MEM_MIB.to_string())
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot", "-kernel"])
            .arg(kernel)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut out = child.stdout.take()?;
        let mut b = [0u8; 1];
        let got = out.read(&mut b).ok()?;
        let t1 = t0.elapsed();
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        let t2 = t0.elapsed();
        // Reap and read the peak RSS of the child.
        let mut status = 0;
        // SAFETY: rusage is plain data filled in by wait4 for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pid of our child, valid out-pointers.
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        let t3 = t0.elapsed();
        if got != 1 || b[0] != b'X' {
            eprintln!("qemu printed nothing; skipping it");
            return None;
        }
        row.first.push(t1.as_secs_f64() * 1e3);
        row.exit.push(t2.as_secs_f64() * 1e3);
        row.teardown.push((t3 - t2).as_secs_f64() * 1e3);
        row.total.push(t3.as_secs_f64() * 1e3);
        row.rss.push(ru.ru_maxrss as f64);
    }
    Some(row)
}

/// `nook boot` spawned as a process, as a user runs it: wall time from spawn
/// to reaped, with the guest's byte read from its stdout. The binary is
/// `NOOK_BIN` or `nook` next to this bench's directory (build it with
/// `cargo build --release -p nook-cli`).
fn bench_process(kernel: &std::path::Path, n: usize) -> Option<Vec<f64>> {
    let bin = std::env::var_os("NOOK_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("nook"))
        })?;
    if !bin.is_file() {
        eprintln!(
            "no nook binary at {} (cargo build --release -p nook-cli, or set NOOK_BIN): \
             skipping the whole-process row",
            bin.display()
        );
        return None;
    }
    let mut wall = Vec::new();
    for i in 0..n + 1 {
        let t0 = Instant::now();
        let out = Command::new(&bin)
            .args(["boot", "--engine", "kvm", "--memory", &MEM_MIB.to_string()])
            .arg("--kernel")
            .arg(kernel)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let t = t0.elapsed();
        assert_eq!(out.stdout, b"X", "nook boot printed {:?}", out.stdout);
        assert_eq!(out.status.code(), Some(0), "nook boot: {}", out.status);
        if i > 0 {
            wall.push(t.as_secs_f64() * 1e3);
        }
    }
    Some(wall)
}

/// What closing a KVM VM fd costs, by what the VM holds (this is most of
/// the in-process teardown): `[memory only, + irqchip, + irqchip and PIT]`.
fn bench_vm_close(n: usize) -> ([Vec<f64>; 3], [Vec<f64>; 3]) {
    use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region};
    let mut rows: [Vec<f64>; 3] = Default::default();
    let mut creates: [Vec<f64>; 3] = Default::default();
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let mem = nook_vmm::vstate::memory::create_guest_memory(u64::from(MEM_MIB) << 20).unwrap();
    let region = mem.iter().next().unwrap();
    let host = mem.get_host_address(region.start_addr()).unwrap();
    for _ in 0..n {
        for (level, row) in rows.iter_mut().enumerate() {
            let t0 = Instant::now();
            let vm = kvm.create_vm().unwrap();
            let desc = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `desc` describes a live mapping owned by `mem`, which
            // outlives `vm`.
            unsafe { vm.set_user_memory_region(desc) }.unwrap();
            if level >= 1 {
                vm.create_irq_chip().unwrap();
            }
            if level >= 2 {
                vm.create_pit2(kvm_pit_config::default()).unwrap();
            }
            creates[level].push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            drop(vm);
            row.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    (rows, creates)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("pvh-guest.elf");
    std::fs::write(&kernel, pvh_guest()).unwrap();
    let mut nook = bench_nook(&kernel, n);
    let process = bench_process(&kernel, n);
    let mut close = bench_vm_close(n.min(15));
    let qemu = bench_qemu(&kernel, n.min(10));
    println!("guest: {MEM_MIB} MiB, 1 vCPU, PVH ELF that prints 1 byte and powers off; medians");
    println!(
        "{:<34} {:>14} {:>14}",
        "metric",
        format!("nook (n={n})"),
        "qemu microvm"
    );
    let mut q = qemu;
    let line = |name: &str, a: &mut Vec<f64>, b: Option<&mut Vec<f64>>, unit: &str| {
        let qb = b.map_or("n/a".to_string(), |v| format!("{:.2} {unit}", median(v)));
        println!(
            "{name:<34} {:>14} {qb:>14}",
            format!("{:.2} {unit}", median(a))
        );
    };
    line(
        "start -> first guest byte",
        &mut nook.first,
        q.as_mut().map(|r| &mut r.first),
        "ms",
    );
    line(
        "start -> guest exit seen",
        &mut nook.exit,
        q.as_mut().map(|r| &mut r.exit),
        "ms",
    );
    line(
        "teardown (drop / reap)",
        &mut nook.teardown,
        q.as_mut().map(|r| &mut r.teardown),
        "ms",
    );
    line(
        "whole boot-print-poweroff",
        &mut nook.total,
        q.as_mut().map(|r| &mut r.total),
        "ms",
    );
    match process {
        Some(mut wall) => line(
            "whole process: nook boot (spawn->reap)",
            &mut wall,
            q.as_mut().map(|r| &mut r.total),
            "ms",
        ),
        None => println!("{:<34} {:>14}", "whole process: nook boot", "n/a"),
    }
    let ([mem_only, irqchip, pit], [c_mem, c_irqchip, c_pit]) = &mut close;
    line("  create vm: memory slot only", c_mem, None, "ms");
    line("  create vm: + irqchip", c_irqchip, None, "ms");
    line("  create vm: + irqchip + pit", c_pit, None, "ms");
    line("  close vm fd: memory slot only", mem_only, None, "ms");
    line("  close vm fd: + irqchip", irqchip, None, "ms");
    line("  close vm fd: + irqchip + pit", pit, None, "ms");
    line(
        "rss beyond guest (later VMs; qemu: peak)",
        &mut nook.rss,
        q.as_mut().map(|r| &mut r.rss),
        "KiB",
    );
}
