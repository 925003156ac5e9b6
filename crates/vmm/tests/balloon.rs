//! The virtio-balloon device driven by a synthetic guest: pages it inflates
//! and free ranges it reports leave host memory, the statistics buffer
//! comes back on the timer, and the device (target, `actual`, statistics,
//! queue positions) carries on in a clone restored from a snapshot.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use iced_x86::code_asm::*;
use nook_vmm::{
    AfterSnapshot, ExitReason, KvmBalloonConfig, KvmConfig, KvmRestoreConfig, KvmVm, SerialSink,
};
use vm_memory::{Bytes, GuestAddress};

const TIMEOUT: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;
/// Rings of the four queues (descriptors, avail +0x100, used +0x200).
const RING_INFLATE: u64 = DATA_ADDR;
const RING_DEFLATE: u64 = DATA_ADDR + 0x1000;
const RING_STATS: u64 = DATA_ADDR + 0x2000;
const RING_REPORT: u64 = DATA_ADDR + 0x3000;
/// The PFNs of region A (2048 of them, 8 KiB).
const PFNS: u64 = DATA_ADDR + 0x8000;
/// The statistics buffer: two entries.
const STATS: u64 = DATA_ADDR + 0xb000;
/// The host moves the guest on by raising this word.
const FLAG: u64 = DATA_ADDR + 0xc000;
/// Guest memory the host fills: A is inflated, B reported before the
/// snapshot, C reported by the clone.
const REGION_A: u64 = 16 * MIB;
const REGION_B: u64 = 32 * MIB;
const REGION_C: u64 = 48 * MIB;
const REGION_LEN: u64 = 8 * MIB;
/// What the guest says its total memory is.
const GUEST_TOTAL: u64 = 60 * MIB;
/// `VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING`.
const FEATURES: u32 = 0x22;
const F_WRITE: u16 = 2;

fn kvm_or_skip() -> bool {
    match nook_vmm::probe::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// Spins until the word at [`FLAG`] is at least `n`.
fn wait_flag(g: &mut Guest, n: u32) {
    let mut l = g.a.create_label();
    g.a.mov(rsi, FLAG).unwrap();
    g.a.set_label(&mut l).unwrap();
    g.a.pause().unwrap();
    g.a.mov(eax, dword_ptr(rsi)).unwrap();
    g.a.cmp(eax, n).unwrap();
    g.a.jb(l).unwrap();
}

/// The balloon driver: set up all four queues with both features, then
/// step by step as the host raises [`FLAG`]:
/// 1. inflate region A, `I`;
/// 2. copy `num_pages` to `actual`, post the statistics, report region B, `R`;
/// 3. wait for the statistics buffer to come back, `S`;
/// 4. (in the clone) report region C, `C`;
/// 5. power off.
fn balloon_guest() -> Guest {
    let mut g = Guest::new();
    let pfns: Vec<u8> = (REGION_A >> 12..(REGION_A + REGION_LEN) >> 12)
        .flat_map(|p| (p as u32).to_le_bytes())
        .collect();
    g.put(PFNS, &pfns);
    g.desc(RING_INFLATE, 0, PFNS, pfns.len() as u32, 0, 0);
    g.avail(RING_INFLATE, &[0]);
    let mut stats = Vec::new();
    for (tag, value) in [(5u16, GUEST_TOTAL), (4, 20 * MIB)] {
        stats.extend(tag.to_le_bytes());
        stats.extend(value.to_le_bytes());
    }
    g.put(STATS, &stats);
    g.desc(RING_STATS, 0, STATS, stats.len() as u32, 0, 0);
    g.avail(RING_STATS, &[0]);
    g.desc(RING_REPORT, 0, REGION_B, REGION_LEN as u32, F_WRITE, 0);
    g.desc(RING_REPORT, 1, REGION_C, REGION_LEN as u32, F_WRITE, 0);

    g.mmio_w(MMIO0, 0x70, 1);
    g.mmio_w(MMIO0, 0x70, 3);
    g.mmio_w(MMIO0, 0x24, 1);
    g.mmio_w(MMIO0, 0x20, 1); // VIRTIO_F_VERSION_1
    g.mmio_w(MMIO0, 0x24, 0);
    g.mmio_w(MMIO0, 0x20, FEATURES);
    g.mmio_w(MMIO0, 0x70, 0xb);
    for (q, ring) in [
        (0, RING_INFLATE),
        (1, RING_DEFLATE),
        (2, RING_STATS),
        (3, RING_REPORT),
    ] {
        g.mmio_w(MMIO0, 0x30, q);
        g.mmio_w(MMIO0, 0x38, 16);
        g.mmio_w(MMIO0, 0x80, ring as u32);
        g.mmio_w(MMIO0, 0x84, 0);
        g.mmio_w(MMIO0, 0x90, (ring + 0x100) as u32);
        g.mmio_w(MMIO0, 0x94, 0);
        g.mmio_w(MMIO0, 0xa0, (ring + 0x200) as u32);
        g.mmio_w(MMIO0, 0xa4, 0);
        g.mmio_w(MMIO0, 0x44, 1);
    }
    g.mmio_w(MMIO0, 0x70, 0xf);

    wait_flag(&mut g, 1);
    g.mmio_w(MMIO0, 0x50, 0);
    g.wait_used(RING_INFLATE, 1);
    g.serial_byte(b'I');

    wait_flag(&mut g, 2);
    g.a.mov(rbx, MMIO0).unwrap();
    g.a.mov(eax, dword_ptr(rbx + 0x100)).unwrap();
    g.a.mov(dword_ptr(rbx + 0x104), eax).unwrap();
    g.mmio_w(MMIO0, 0x50, 2);
    // One report (region B): available index 1.
    g.a.mov(rdi, RING_REPORT + 0x100).unwrap();
    g.a.mov(word_ptr(rdi + 4), 0u32).unwrap();
    g.a.mov(word_ptr(rdi + 2), 1u32).unwrap();
    g.mmio_w(MMIO0, 0x50, 3);
    g.wait_used(RING_REPORT, 1);
    g.serial_byte(b'R');

    g.wait_used(RING_STATS, 1);
    g.serial_byte(b'S');

    wait_flag(&mut g, 3);
    g.a.mov(rdi, RING_REPORT + 0x100).unwrap();
    g.a.mov(word_ptr(rdi + 6), 1u32).unwrap();
    g.a.mov(word_ptr(rdi + 2), 2u32).unwrap();
    g.mmio_w(MMIO0, 0x50, 3);
    g.wait_used(RING_REPORT, 2);
    g.serial_byte(b'C');

    wait_flag(&mut g, 4);
    g.poweroff();
    g
}

fn fill(vm: &KvmVm, start: u64) {
    let data = vec![0xa5u8; REGION_LEN as usize];
    vm.guest_memory()
        .write_slice(&data, GuestAddress(start))
        .unwrap();
}

fn raise(vm: &KvmVm, n: u32) {
    vm.guest_memory().write_obj(n, GuestAddress(FLAG)).unwrap();
}

fn wait_serial(serial: &SharedBuf, text: &str) {
    assert!(
        serial.wait_for(TIMEOUT, |b| b.ends_with(text.as_bytes())),
        "guest did not reach {text:?}: {:?}",
        serial.text()
    );
}

fn resident(vm: &KvmVm) -> u64 {
    vm.resident_memory_bytes().unwrap()
}

#[test]
fn balloon_pages_leave_host_memory_and_the_device_survives_a_snapshot() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let serial = SharedBuf::default();
    let mut cfg = KvmConfig::new(balloon_guest().write(dir.path()));
    cfg.memory_mib = 64;
    cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
    cfg.balloon = Some(KvmBalloonConfig {
        free_page_reporting: true,
        stats_interval_s: 1,
    });
    let vm = KvmVm::start(cfg).unwrap();
    fill(&vm, REGION_A);
    fill(&vm, REGION_B);
    fill(&vm, REGION_C);

    let before = resident(&vm);
    raise(&vm, 1);
    wait_serial(&serial, "I");
    let inflated = resident(&vm);
    assert!(
        before - inflated >= REGION_LEN,
        "inflating 8 MiB freed only {} KiB",
        (before - inflated) >> 10
    );
    let s = vm.balloon_stats().unwrap();
    assert_eq!(s.inflated_pages, REGION_LEN >> 12);

    vm.set_balloon(8).unwrap();
    raise(&vm, 2);
    wait_serial(&serial, "R");
    let reported = resident(&vm);
    assert!(
        inflated - reported >= REGION_LEN,
        "reporting 8 MiB freed only {} KiB",
        (inflated - reported) >> 10
    );
    // (Reading a discarded page maps the zero page: only after measuring.)
    let mut page = [1u8; 32];
    vm.guest_memory()
        .read_slice(&mut page, GuestAddress(REGION_A + MIB))
        .unwrap();
    assert_eq!(page, [0; 32], "an inflated page reads as zeros");
    let s = vm.balloon_stats().unwrap();
    assert_eq!(s.reported_bytes, REGION_LEN);
    assert_eq!(
        (s.target_pages, s.actual_pages, s.actual_mib()),
        (2048, 2048, 8)
    );
    assert_eq!(s.guest.total_bytes, Some(GUEST_TOTAL));
    assert_eq!(s.guest.free_bytes, Some(20 * MIB));
    // The timer hands the statistics buffer back within its interval.
    wait_serial(&serial, "S");

    let snap = dir.path().join("balloon.snap");
    let mut vm = vm;
    vm.snapshot(&snap, AfterSnapshot::Stop).unwrap();
    drop(vm);

    let clone_serial = SharedBuf::default();
    let mut clone = KvmVm::restore(
        &snap,
        KvmRestoreConfig {
            serial: SerialSink::Writer(Box::new(clone_serial.clone())),
            ..Default::default()
        },
    )
    .unwrap();
    let s = clone.balloon_stats().expect("the clone has the balloon");
    assert_eq!((s.target_pages, s.actual_pages), (2048, 2048));
    assert_eq!(s.guest.total_bytes, Some(GUEST_TOTAL));
    // The reporting queue goes on where it was: the clone's next report
    // is discarded and counted.
    // The clone's memory maps the snapshot file privately: a discard
    // frees only the clone's own copies, and never touches the file.
    let blocks = || std::fs::metadata(&snap).unwrap().blocks();
    let file_blocks = blocks();
    raise(&clone, 3);
    wait_serial(&clone_serial, "C");
    assert_eq!(clone.balloon_stats().unwrap().reported_bytes, REGION_LEN);
    assert_eq!(blocks(), file_blocks, "the snapshot file kept its data");
    clone.set_balloon(0).unwrap();
    assert_eq!(clone.balloon_stats().unwrap().target_pages, 0);
    raise(&clone, 4);
    assert_eq!(
        clone.wait_timeout(TIMEOUT).unwrap(),
        Some(ExitReason::PowerOff)
    );
    drop(clone);
    leaks.finish();
}

#[test]
fn a_vm_without_a_balloon_refuses_a_target() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.poweroff();
    let vm = KvmVm::start(KvmConfig::new(g.write(dir.path()))).unwrap();
    assert!(matches!(
        vm.set_balloon(1),
        Err(nook_vmm::VmmError::NoBalloon)
    ));
    assert!(vm.balloon_stats().is_none());
}
