//! Snapshot and restore with synthetic guests: a ring-3 counter cloned
//! twice, a console echo + disk writer restored mid-conversation, sparse
//! files, and the errors of bad snapshot files.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use iced_x86::code_asm::*;
use nook_vmm::snapshot::{SnapshotFormatError, SnapshotHeader};
use nook_vmm::{
    AfterSnapshot, KvmConfig, KvmDiskConfig, KvmRestoreConfig, KvmShareConfig, KvmSnapshotError,
    KvmVm, SerialSink, VmmError,
};
use vm_memory::{Bytes, GuestAddress};

const TIMEOUT: Duration = Duration::from_secs(20);
/// The counter guest's variables: count, ask flag, marker.
const COUNT: u64 = DATA_ADDR + 0x8000;
const ASK: u64 = COUNT + 8;
const MARK: u64 = COUNT + 16;
const USER_STACK: u64 = DATA_ADDR + 0x7000;
const GDT: u64 = DATA_ADDR + 0x6000;

fn kvm_or_skip() -> bool {
    match nook_vmm::probe::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_u64(vm: &KvmVm, addr: u64) -> u64 {
    vm.guest_memory()
        .read_obj::<u64>(GuestAddress(addr))
        .unwrap()
}

/// A guest that drops to ring 3 (IOPL 3, interrupts off) and counts in
/// [`COUNT`] forever. When the host puts a non-zero byte in [`ASK`], the
/// guest copies it to [`MARK`], clears it and writes the count's 8 bytes
/// to COM1. Only a few dozen ring-0 instructions run.
fn counter_guest() -> Guest {
    let mut g = Guest::new();
    // GDT: null, kernel code64, kernel data, user code64, user data.
    for (i, e) in [
        0u64,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
    ]
    .iter()
    .enumerate()
    {
        g.put(GDT + 8 * i as u64, &e.to_le_bytes());
    }
    // GDT pseudo-descriptor right after it.
    let gdtr = GDT + 0x40;
    g.put(gdtr, &(5u16 * 8 - 1).to_le_bytes());
    g.put(gdtr + 2, &GDT.to_le_bytes());
    let a = &mut g.a;
    // User bit on the paging entries covering the first 4 MiB.
    for entry in [0x9000u64, 0xa000, 0xb000, 0xb008] {
        a.mov(rdi, entry).unwrap();
        a.or(qword_ptr(rdi), 4).unwrap();
    }
    a.mov(rax, cr3).unwrap();
    a.mov(cr3, rax).unwrap();
    a.mov(rax, gdtr).unwrap();
    a.lgdt(ptr(rax)).unwrap();
    let mut user = a.create_label();
    a.push(0x23).unwrap(); // ss
    a.mov(rax, USER_STACK).unwrap();
    a.push(rax).unwrap(); // rsp
    a.push(0x3002).unwrap(); // rflags: IOPL 3, IF 0
    a.push(0x1b).unwrap(); // cs
    a.lea(rax, ptr(user)).unwrap();
    a.push(rax).unwrap(); // rip
    a.iretq().unwrap();
    // Ring 3.
    a.set_label(&mut user).unwrap();
    a.mov(rbx, COUNT).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    let mut top = a.create_label();
    let mut report = a.create_label();
    a.set_label(&mut top).unwrap();
    a.inc(qword_ptr(rbx)).unwrap();
    a.movzx(ecx, byte_ptr(rbx + 8)).unwrap();
    a.test(ecx, ecx).unwrap();
    a.jnz(report).unwrap();
    a.jmp(top).unwrap();
    a.set_label(&mut report).unwrap();
    a.mov(qword_ptr(rbx + 16), rcx).unwrap();
    a.mov(byte_ptr(rbx + 8), 0).unwrap();
    a.mov(rax, qword_ptr(rbx)).unwrap();
    for _ in 0..8 {
        a.out(dx, al).unwrap();
        a.shr(rax, 8).unwrap();
    }
    a.jmp(top).unwrap();
    g
}

/// Asks a counter guest for its count and checks it reports one.
fn ask(vm: &KvmVm, serial: &SharedBuf, mark: u8) -> u64 {
    let before = serial.contents().len();
    vm.guest_memory()
        .write_obj(mark, GuestAddress(ASK))
        .unwrap();
    assert!(
        serial.wait_for(TIMEOUT, |b| b.len() >= before + 8),
        "no report"
    );
    let b = serial.contents();
    u64::from_le_bytes(b[before..before + 8].try_into().unwrap())
}

fn config(kernel: &Path, serial: &SharedBuf) -> KvmConfig {
    let mut cfg = KvmConfig::new(kernel);
    cfg.memory_mib = 64;
    cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
    cfg
}

fn restore(path: &Path, serial: &SharedBuf) -> KvmVm {
    KvmVm::restore(
        path,
        KvmRestoreConfig {
            serial: SerialSink::Writer(Box::new(serial.clone())),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Starts the counter guest with two vCPUs (the second one waits for SIPI
/// throughout).
fn start_counter(dir: &Path, serial: &SharedBuf) -> KvmVm {
    let mut cfg = config(&counter_guest().write(dir), serial);
    cfg.vcpus = 2;
    KvmVm::start(cfg).unwrap()
}

#[test]
fn counter_clones_continue_independently_and_never_write_the_file() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let serial = SharedBuf::default();
    let mut src = start_counter(dir.path(), &serial);
    wait_until("the count to pass 20M", || {
        read_u64(&src, COUNT) > 20_000_000
    });
    assert!(ask(&src, &serial, 1) > 20_000_000, "ring 3 reports");

    let path = dir.path().join("counter.snap");
    let info = src.snapshot(&path, AfterSnapshot::Stop).unwrap();
    assert_eq!(src.wait().unwrap(), nook_vmm::ExitReason::Stopped);
    let saved = read_u64(&src, COUNT);
    eprintln!("{info:?}");
    drop(src);
    let file = std::fs::read(&path).unwrap();
    let header = SnapshotHeader::decode(&file).unwrap();
    let at = (header.mem_offset + COUNT) as usize;
    assert_eq!(
        u64::from_le_bytes(file[at..at + 8].try_into().unwrap()),
        saved,
        "the file holds the count at the pause"
    );
    // Only touched pages take space.
    let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert_eq!(info.allocated_bytes, blocks);
    assert!(
        blocks < 1 << 20,
        "{blocks} bytes allocated for a 64 MiB guest"
    );
    assert_eq!(info.apparent_bytes, file.len() as u64);
    assert!(info.apparent_bytes > 64 << 20);

    let (sa, sb) = (SharedBuf::default(), SharedBuf::default());
    let mut a = restore(&path, &sa);
    let mut b = restore(&path, &sb);
    let (a0, b0) = (read_u64(&a, COUNT), read_u64(&b, COUNT));
    assert!(a0 >= saved && b0 >= saved, "{a0} {b0} < {saved}");
    wait_until("both clones to count", || {
        read_u64(&a, COUNT) > saved + 1_000_000 && read_u64(&b, COUNT) > saved + 1_000_000
    });
    // Each clone answers only its own host's question and keeps its own
    // marker: guest writes in one are invisible to the other.
    let ra = ask(&a, &sa, 0xa1);
    assert!(ra > saved);
    assert!(sb.contents().is_empty(), "b was not asked");
    let rb = ask(&b, &sb, 0xb2);
    assert!(rb > saved);
    assert_eq!(read_u64(&a, MARK), 0xa1);
    assert_eq!(read_u64(&b, MARK), 0xb2);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        file,
        "snapshot file unchanged"
    );

    // A snapshot of a clone (file-backed memory) restores too.
    let path2 = dir.path().join("clone.snap");
    a.snapshot(&path2, AfterSnapshot::Resume).unwrap();
    let at_snap = {
        let f = std::fs::read(&path2).unwrap();
        let h = SnapshotHeader::decode(&f).unwrap();
        let at = (h.mem_offset + COUNT) as usize;
        u64::from_le_bytes(f[at..at + 8].try_into().unwrap())
    };
    assert!(at_snap > ra);
    wait_until("a to keep counting", || read_u64(&a, COUNT) > at_snap);
    let sc = SharedBuf::default();
    let mut c = restore(&path2, &sc);
    assert!(read_u64(&c, COUNT) >= at_snap);
    assert_eq!(read_u64(&c, MARK), 0xa1, "c inherits a's memory");
    let rc = ask(&c, &sc, 0xc3);
    assert!(rc >= at_snap, "{rc} < {at_snap}");
    for vm in [&mut a, &mut b, &mut c] {
        vm.stop();
    }
    drop((a, b, c));
    assert_eq!(std::fs::read(&path).unwrap(), file);
    leaks.finish();
}

#[test]
fn restorer_reuses_vms_and_every_restore_starts_from_the_snapshot() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let serial = SharedBuf::default();
    let mut src = start_counter(dir.path(), &serial);
    wait_until("the count to pass 1M", || read_u64(&src, COUNT) > 1_000_000);
    let path = dir.path().join("counter.snap");
    src.snapshot(&path, AfterSnapshot::Stop).unwrap();
    let saved = read_u64(&src, COUNT);
    drop(src);

    let restorer = nook_vmm::KvmRestorer::open(&path).unwrap();
    assert_eq!(restorer.memory_bytes(), 64 << 20);
    restorer.prepare(2).unwrap();
    assert_eq!(restorer.stats().ready, 2);
    const POISON: u64 = DATA_ADDR + 0x9000;
    for round in 0..4u8 {
        let out = SharedBuf::default();
        let vm = restorer
            .restore(KvmRestoreConfig {
                serial: SerialSink::Writer(Box::new(out.clone())),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            vm.start_phases()[0].0,
            "kvm vm (ready)",
            "round {round}: {:?}",
            vm.start_phases()
        );
        // Nothing of the previous clone is left: not its memory, not its
        // marker, not its count.
        assert_eq!(read_u64(&vm, POISON), 0, "round {round}");
        assert_eq!(read_u64(&vm, MARK), 0, "round {round}");
        let count = read_u64(&vm, COUNT);
        assert!(count >= saved, "round {round}: {count} < {saved}");
        wait_until("the clone to count", || read_u64(&vm, COUNT) > saved + 1000);
        let mark = 0x10 + round;
        let reply = ask(&vm, &out, mark);
        assert!(reply > saved + 1000, "round {round}");
        assert_eq!(read_u64(&vm, MARK), u64::from(mark));
        vm.guest_memory()
            .write_obj(0xdead_beef_u64, GuestAddress(POISON))
            .unwrap();
        drop(vm);
        let stats = restorer.stats();
        assert_eq!(stats.ready, 2, "round {round}: the vm came back");
        assert_eq!(stats.reused, u64::from(round) + 1);
    }
    // Two at once, from the two ready VMs.
    let (sa, sb) = (SharedBuf::default(), SharedBuf::default());
    let cfg = |s: &SharedBuf| KvmRestoreConfig {
        serial: SerialSink::Writer(Box::new(s.clone())),
        ..Default::default()
    };
    let a = restorer.restore(cfg(&sa)).unwrap();
    let b = restorer.restore(cfg(&sb)).unwrap();
    assert_eq!(restorer.stats().ready, 0);
    wait_until("both clones to count", || {
        read_u64(&a, COUNT) > saved + 1000 && read_u64(&b, COUNT) > saved + 1000
    });
    assert!(ask(&a, &sa, 0xa1) > saved + 1000);
    assert!(ask(&b, &sb, 0xb2) > saved + 1000);
    assert_eq!(read_u64(&a, MARK), 0xa1);
    assert_eq!(read_u64(&b, MARK), 0xb2);
    drop((a, b));
    assert_eq!(restorer.stats().ready, 2);
    drop(restorer);
    leaks.finish();
}

const RING0: u64 = DATA_ADDR;
const RING1: u64 = DATA_ADDR + 0x1000;
const RING2: u64 = DATA_ADDR + 0x2000;
const BUF: u64 = DATA_ADDR + 0x1_0000;
const HDR: u64 = DATA_ADDR + 0x1_1000;
const STATUS: u64 = DATA_ADDR + 0x1_1100;
const MMIO1: u64 = MMIO0 + 0x1000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Posts descriptor 0 of the ring at `ring` (avail.ring[idx % 16] = 0,
/// idx += 1), notifies queue `q` at `mmio`, and waits for used idx to
/// reach r13.
fn post_and_wait(g: &mut Guest, ring: u64, mmio: u64, q: u32) {
    let a = &mut g.a;
    a.mov(rdi, ring + 0x100).unwrap();
    a.movzx(eax, word_ptr(rdi + 2)).unwrap();
    a.mov(ecx, eax).unwrap();
    a.and(ecx, 15).unwrap();
    a.mov(word_ptr(rdi + rcx * 2 + 4), 0).unwrap();
    a.inc(eax).unwrap();
    a.mov(word_ptr(rdi + 2), ax).unwrap();
    g.mmio_w(mmio, 0x50, q);
    let a = &mut g.a;
    let mut l = a.create_label();
    a.mov(rsi, ring + 0x200).unwrap();
    a.set_label(&mut l).unwrap();
    a.pause().unwrap();
    a.movzx(eax, word_ptr(rsi + 2)).unwrap();
    a.cmp(eax, r13d).unwrap();
    a.jb(l).unwrap();
}

/// Forever: receive a console message, echo it, write the buffer to disk
/// sector n (n = 0, 1, ...).
fn echo_disk_guest() -> Guest {
    let mut g = Guest::new();
    g.desc(RING0, 0, BUF, 64, F_WRITE, 0);
    g.desc(RING1, 0, BUF, 0, 0, 0);
    g.desc(RING2, 0, HDR, 16, F_NEXT, 1);
    g.desc(RING2, 1, BUF, 512, F_NEXT, 2);
    g.desc(RING2, 2, STATUS, 1, F_WRITE, 0);
    g.put(HDR, &1u32.to_le_bytes()); // VIRTIO_BLK_T_OUT
    g.virtio_init(MMIO0, &[(0, RING0), (1, RING1)]);
    g.virtio_init(MMIO1, &[(0, RING2)]);
    let mut top = g.a.create_label();
    g.a.xor(r12d, r12d).unwrap();
    g.a.set_label(&mut top).unwrap();
    g.a.lea(r13d, dword_ptr(r12 + 1)).unwrap();
    post_and_wait(&mut g, RING0, MMIO0, 0);
    let a = &mut g.a;
    // Length of the received message: used.ring[n % 16].len.
    a.mov(ecx, r12d).unwrap();
    a.and(ecx, 15).unwrap();
    a.mov(rsi, RING0 + 0x200).unwrap();
    a.mov(eax, dword_ptr(rsi + rcx * 8 + 8)).unwrap();
    a.mov(rdi, RING1).unwrap();
    a.mov(dword_ptr(rdi + 8), eax).unwrap();
    post_and_wait(&mut g, RING1, MMIO0, 1);
    g.a.mov(rdi, HDR).unwrap();
    g.a.mov(qword_ptr(rdi + 8), r12).unwrap();
    post_and_wait(&mut g, RING2, MMIO1, 0);
    g.a.inc(r12).unwrap();
    g.a.jmp(top).unwrap();
    g
}

fn sector(disk: &Path, n: usize) -> Vec<u8> {
    std::fs::read(disk).unwrap()[n * 512..(n + 1) * 512].to_vec()
}

#[test]
fn console_and_disk_resume_after_restore() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&echo_disk_guest().write(dir.path()), &serial);
    cfg.console = Some(guest_end);
    cfg.disks.push(KvmDiskConfig {
        path: disk.clone(),
        read_only: false,
        id: "snapdisk".into(),
    });
    let mut src = KvmVm::start(cfg).unwrap();
    host.write_all(b"before").unwrap();
    let mut echo = [0u8; 6];
    host.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"before");
    wait_until("sector 0", || sector(&disk, 0).starts_with(b"before"));
    // Give the guest time to post its next receive buffer and wait on it.
    std::thread::sleep(Duration::from_millis(50));
    let path = dir.path().join("echo.snap");
    src.snapshot(&path, AfterSnapshot::Stop).unwrap();
    drop(src);
    drop(host);

    // Each clone writes to its own copy of the disk. The second clone
    // runs in the KVM VM the first one handed back to the restorer (same
    // irqfds and ioeventfds, new devices).
    let restorer = nook_vmm::KvmRestorer::open(&path).unwrap();
    let original = std::fs::read(&disk).unwrap();
    for round in 0..2 {
        let clone_disk = dir.path().join(format!("clone{round}.img"));
        std::fs::copy(&disk, &clone_disk).unwrap();
        let (mut host, guest_end) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut vm = restorer
            .restore(KvmRestoreConfig {
                serial: SerialSink::Null,
                console: Some(guest_end),
                disks: vec![clone_disk.clone()],
                ..KvmRestoreConfig::default()
            })
            .unwrap();
        host.write_all(b"after!").unwrap();
        let mut echo = [0u8; 6];
        host.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"after!", "round {round}");
        wait_until("sector 1 of the clone's disk", || {
            sector(&clone_disk, 1).starts_with(b"after!")
        });
        assert!(sector(&clone_disk, 0).starts_with(b"before"));
        // And once more, to see the queues keep going.
        host.write_all(b"again!").unwrap();
        host.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"again!");
        wait_until("sector 2", || sector(&clone_disk, 2).starts_with(b"again!"));
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            original,
            "source disk untouched"
        );
        vm.stop();
        drop(vm);
        drop(host);
    }
    assert_eq!(restorer.stats().reused, 2);
    drop(restorer);
    leaks.finish();
}

/// A snapshot of a small guest that only runs `hlt`.
fn idle_snapshot(dir: &Path) -> std::path::PathBuf {
    idle_snapshot_with(dir, Vec::new())
}

fn idle_snapshot_with(dir: &Path, shares: Vec<KvmShareConfig>) -> std::path::PathBuf {
    let mut g = Guest::new();
    g.serial_byte(b'i');
    let mut l = g.a.create_label();
    g.a.set_label(&mut l).unwrap();
    g.a.hlt().unwrap();
    g.a.jmp(l).unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir), &serial);
    cfg.memory_mib = 16;
    cfg.shares = shares;
    let mut vm = KvmVm::start(cfg).unwrap();
    assert!(serial.wait_for(TIMEOUT, |b| b == b"i"));
    let path = dir.join("idle.snap");
    vm.snapshot(&path, AfterSnapshot::Stop).unwrap();
    // A stopped VM cannot be snapshotted.
    let e = vm
        .snapshot(&dir.join("again.snap"), AfterSnapshot::Resume)
        .unwrap_err();
    assert!(
        matches!(e, VmmError::Snapshot(KvmSnapshotError::NotRunning)),
        "{e:?}"
    );
    assert!(!dir.join("again.snap").exists());
    path
}

fn format_error(path: &Path) -> SnapshotFormatError {
    match KvmVm::restore(path, KvmRestoreConfig::default()) {
        Err(VmmError::Snapshot(KvmSnapshotError::Format { source, .. })) => source,
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("restored a bad snapshot"),
    }
}

#[test]
fn bad_snapshot_files_fail_with_distinct_errors() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let good = idle_snapshot(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let header = SnapshotHeader::decode(&bytes).unwrap();
    let bad = dir.path().join("bad.snap");

    // One flipped byte in the state section.
    let mut b = bytes.clone();
    b[header.state_offset as usize + header.state_len as usize / 2] ^= 0x10;
    std::fs::write(&bad, &b).unwrap();
    let e = format_error(&bad);
    assert!(
        matches!(e, SnapshotFormatError::StateChecksum { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"));

    // Truncated: in the memory section, in the state, in the header.
    for len in [bytes.len() - 4096, header.state_offset as usize + 10, 60] {
        std::fs::write(&bad, &bytes[..len]).unwrap();
        let e = format_error(&bad);
        assert!(
            matches!(e, SnapshotFormatError::Truncated { .. }),
            "{len}: {e}"
        );
    }

    // Foreign: an ELF file, an empty file.
    std::fs::write(&bad, b"\x7fELF\x02\x01\x01\0 not a snapshot at all").unwrap();
    assert!(matches!(
        format_error(&bad),
        SnapshotFormatError::NotASnapshot
    ));
    std::fs::write(&bad, b"").unwrap();
    assert!(matches!(
        format_error(&bad),
        SnapshotFormatError::NotASnapshot
    ));

    // Another format version.
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&bad, &b).unwrap();
    let e = format_error(&bad);
    assert!(
        matches!(
            e,
            SnapshotFormatError::UnsupportedVersion {
                found: 7,
                supported: nook_vmm::snapshot::format::FORMAT_VERSION
            }
        ),
        "{e}"
    );

    // A header byte (memory length) flipped.
    let mut b = bytes.clone();
    b[0x31] ^= 1;
    std::fs::write(&bad, &b).unwrap();
    assert!(matches!(
        format_error(&bad),
        SnapshotFormatError::HeaderChecksum
    ));

    // Another host: a different CPU vendor in an otherwise valid header.
    let mut h = header;
    h.compat.cpu_vendor = *b"SomeOtherCPU";
    let mut b = bytes.clone();
    b[..128].copy_from_slice(&h.encode());
    std::fs::write(&bad, &b).unwrap();
    let e = KvmVm::restore(&bad, KvmRestoreConfig::default()).unwrap_err();
    assert!(
        matches!(
            e,
            VmmError::Snapshot(KvmSnapshotError::Incompatible {
                what: "cpu vendor",
                ..
            })
        ),
        "{e:?}"
    );

    // A missing file is an I/O error, not a format one.
    let e = KvmVm::restore(&dir.path().join("nope"), KvmRestoreConfig::default()).unwrap_err();
    assert!(matches!(
        e,
        VmmError::Snapshot(KvmSnapshotError::Io(nook_fsutil::IoError {
            op: "open",
            ..
        }))
    ));

    // The good one still restores and is idle.
    let mut vm = KvmVm::restore(&good, KvmRestoreConfig::default()).unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(20)).unwrap(), None);
    vm.stop();
    drop(vm);
    leaks.finish();
}

#[test]
fn restore_config_must_fit_the_snapshot() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let good = idle_snapshot(dir.path());
    let (_host, guest_end) = UnixStream::pair().unwrap();
    let e = KvmVm::restore(
        &good,
        KvmRestoreConfig {
            console: Some(guest_end),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, VmmError::Snapshot(KvmSnapshotError::Config(_))),
        "{e:?}"
    );
    let e = KvmVm::restore(
        &good,
        KvmRestoreConfig {
            disks: vec![dir.path().join("x")],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, VmmError::Snapshot(KvmSnapshotError::Config(_))),
        "{e:?}"
    );
    drop(_host);
    leaks.finish();
}

#[test]
fn a_vm_with_a_share_restores_with_it() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let snap = idle_snapshot_with(dir.path(), vec![share_config(shared.path(), "nook0")]);
    // The share comes back when the restore names it...
    let mut vm = KvmVm::restore(
        &snap,
        KvmRestoreConfig {
            shares: vec![share_config(shared.path(), "nook0")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(20)).unwrap(), None);
    vm.stop();
    drop(vm);
    // ...and the restore is refused without it or with another tag.
    let e = KvmVm::restore(&snap, KvmRestoreConfig::default()).unwrap_err();
    assert!(
        matches!(e, VmmError::Snapshot(KvmSnapshotError::Config(_))),
        "{e:?}"
    );
    let e = KvmVm::restore(
        &snap,
        KvmRestoreConfig {
            shares: vec![share_config(shared.path(), "other")],
            ..Default::default()
        },
    )
    .unwrap_err();
    let chain = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(chain.contains("nook0"), "{chain}");
    leaks.finish();
}
