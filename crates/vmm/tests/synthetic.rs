//! VMM tests with synthetic guests: tiny long-mode programs loaded as the
//! kernel. Each runs in milliseconds even where guest ring 0 is emulated,
//! and each checks that the VM left no thread or file descriptor behind.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use iced_x86::code_asm::*;
use nook_vmm::{ExitReason, KvmConfig, KvmDiskConfig, KvmVm, SerialSink};
use vm_memory::{Bytes, GuestAddress};

const TIMEOUT: Duration = Duration::from_secs(20);

fn kvm_or_skip() -> bool {
    match nook_vmm::probe::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

fn config(kernel: &std::path::Path, serial: &SharedBuf) -> KvmConfig {
    let mut cfg = KvmConfig::new(kernel);
    cfg.memory_mib = 64;
    cfg.serial = SerialSink::Writer(Box::new(serial.clone()));
    cfg
}

/// Runs the VM to its end (or fails the test after [`TIMEOUT`]).
fn run(vm: &mut KvmVm) -> ExitReason {
    match vm.wait_timeout(TIMEOUT).expect("vm failed") {
        Some(r) => r,
        None => {
            vm.stop();
            panic!("guest did not finish in {TIMEOUT:?}");
        }
    }
}

#[test]
fn first_instruction_and_serial_output_then_poweroff() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    for b in b"hello from ring 0\n" {
        g.serial_byte(*b);
    }
    g.poweroff();
    let kernel = g.write(dir.path());
    let serial = SharedBuf::default();
    let t0 = Instant::now();
    let mut vm = KvmVm::start(config(&kernel, &serial)).unwrap();
    assert!(
        serial.wait_for(TIMEOUT, |b| !b.is_empty()),
        "no first port write"
    );
    eprintln!("start to first guest port write: {:?}", t0.elapsed());
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    assert_eq!(serial.text(), "hello from ring 0\n");
    assert_eq!(vm.boot_setup().format, nook_vmm::KernelFormat::Elf64);
    // Waiting again gives the same answer.
    assert_eq!(vm.wait().unwrap(), ExitReason::PowerOff);
    drop(vm);
    leaks.finish();
}

#[test]
fn triple_fault_ends_the_vm() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.serial_byte(b'x');
    // #UD with an IDT holding no usable gate: #GP, #DF, shutdown.
    g.a.ud2().unwrap();
    let serial = SharedBuf::default();
    let mut vm = KvmVm::start(config(&g.write(dir.path()), &serial)).unwrap();
    assert_eq!(run(&mut vm), ExitReason::TripleFault);
    assert_eq!(serial.text(), "x");
    drop(vm);
    leaks.finish();
}

#[test]
fn kvm_internal_error_reports_suberror_rip_and_code() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.serial_byte(b'x');
    // SSE on (CR4.OSFXSR), then an SSE instruction reading unbacked guest
    // memory: KVM must emulate it as MMIO and cannot (an emulation failure
    // at CPL 0 is KVM_EXIT_INTERNAL_ERROR, on hardware and where ring 0 is
    // emulated alike).
    g.a.mov(rax, cr4).unwrap();
    g.a.or(rax, 0x600).unwrap();
    g.a.mov(cr4, rax).unwrap();
    g.a.mov(rbx, 0xd100_0000u64).unwrap();
    g.a.paddb(xmm0, xmmword_ptr(rbx)).unwrap();
    g.a.hlt().unwrap();
    let code = g.a.assemble(CODE_ADDR).unwrap();
    let paddb = [0x66, 0x0f, 0xfc, 0x03];
    let offset = code.windows(4).position(|w| w == paddb).unwrap();
    let serial = SharedBuf::default();
    let mut vm = KvmVm::start(config(&g.write(dir.path()), &serial)).unwrap();
    let ExitReason::InternalError { vcpu, detail } = run(&mut vm) else {
        panic!("expected an internal error");
    };
    assert_eq!(vcpu, 0);
    assert_eq!(detail.kind, nook_vmm::vstate::fault::FaultKind::Emulation);
    assert_eq!(detail.rip, Some(CODE_ADDR + offset as u64));
    assert_eq!(&detail.code[..4], &paddb, "{detail}");
    let text = detail.to_string();
    eprintln!("{text}");
    assert!(text.contains("emulation failure (suberror 1)"), "{text}");
    assert!(
        text.contains(&format!("at rip {:#x}", CODE_ADDR + offset as u64)),
        "{text}"
    );
    assert!(text.contains("code 66 0f fc 03"), "{text}");
    assert_eq!(serial.text(), "x");
    drop(vm);
    leaks.finish();
}

#[test]
fn i8042_reset_ends_the_vm_as_reset() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.a.mov(al, 0xfeu32).unwrap();
    g.a.out(0x64, al).unwrap();
    g.a.hlt().unwrap();
    let serial = SharedBuf::default();
    let mut vm = KvmVm::start(config(&g.write(dir.path()), &serial)).unwrap();
    assert_eq!(run(&mut vm), ExitReason::Reset);
    drop(vm);
    leaks.finish();
}

#[test]
fn host_stop_kills_a_spinning_guest() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.serial_byte(b'.');
    let mut l = g.a.create_label();
    g.a.set_label(&mut l).unwrap();
    g.a.hlt().unwrap(); // interrupts off: sleeps forever in KVM
    g.a.jmp(l).unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.vcpus = 2;
    let mut vm = KvmVm::start(cfg).unwrap();
    assert!(serial.wait_for(TIMEOUT, |b| b == b"."));
    assert_eq!(vm.wait_timeout(Duration::from_millis(20)).unwrap(), None);
    let t = Instant::now();
    vm.stop();
    eprintln!("stop of a running 2-vcpu vm: {:?}", t.elapsed());
    assert_eq!(vm.wait().unwrap(), ExitReason::Stopped);
    drop(vm);
    leaks.finish();
}

#[test]
fn second_vcpu_comes_up_through_init_sipi() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    // AP trampoline (16-bit real mode, copied to 0x10000 = SIPI vector 0x10):
    // mov dx,0x3f8; mov al,'B'; out dx,al; mov dx,0x600; mov al,0x34;
    // out dx,al; hlt
    let tramp: [u8; 14] = [
        0xba, 0xf8, 0x03, 0xb0, b'B', 0xee, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xf4,
    ];
    let tramp_src = DATA_ADDR + 0x1_0000;
    g.put(tramp_src, &tramp);
    g.serial_byte(b'A');
    let a = &mut g.a;
    a.mov(rsi, tramp_src).unwrap();
    a.mov(rdi, 0x1_0000u64).unwrap();
    a.mov(ecx, tramp.len() as u32).unwrap();
    a.rep().movsb().unwrap();
    a.mov(rbx, 0xfee0_0000u64).unwrap();
    a.mov(dword_ptr(rbx + 0xf0), 0x1ffu32).unwrap(); // SVR: APIC on
    a.mov(dword_ptr(rbx + 0x310), 1u32 << 24).unwrap(); // to APIC id 1
    a.mov(dword_ptr(rbx + 0x300), 0x4500u32).unwrap(); // INIT
    a.mov(dword_ptr(rbx + 0x310), 1u32 << 24).unwrap();
    a.mov(dword_ptr(rbx + 0x300), 0x4610u32).unwrap(); // SIPI, vector 0x10
    let mut l = a.create_label();
    a.set_label(&mut l).unwrap();
    a.hlt().unwrap();
    a.jmp(l).unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.vcpus = 2;
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff, "the AP powers off");
    // 'B' can only come from the second vCPU, in real mode at 0x10000.
    assert_eq!(serial.text(), "AB");
    drop(vm);
    leaks.finish();
}

/// Ring layout used by the virtio guests: 16 entries, avail at +0x100, used
/// at +0x200.
const RING0: u64 = DATA_ADDR;
const RING1: u64 = DATA_ADDR + 0x1000;
const BUF: u64 = DATA_ADDR + 0x1_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[test]
fn virtio_console_round_trip() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    // receiveq: one 64-byte buffer, already available.
    g.desc(RING0, 0, BUF, 64, F_WRITE, 0);
    g.avail(RING0, &[0]);
    // transmitq: the same buffer, made available after the echo.
    g.desc(RING1, 0, BUF, 0, 0, 0);
    g.virtio_init(MMIO0, &[(0, RING0), (1, RING1)]);
    g.mmio_w(MMIO0, 0x50, 0);
    g.wait_used(RING0, 1);
    let a = &mut g.a;
    a.mov(rsi, RING0 + 0x200).unwrap();
    a.mov(eax, dword_ptr(rsi + 8)).unwrap(); // used.ring[0].len
    a.mov(rdi, RING1).unwrap();
    a.mov(dword_ptr(rdi + 8), eax).unwrap(); // tx desc len
    a.mov(rdi, RING1 + 0x100).unwrap();
    a.mov(word_ptr(rdi + 4), 0u32).unwrap(); // avail.ring[0] = 0
    a.mov(word_ptr(rdi + 2), 1u32).unwrap(); // avail.idx = 1
    g.mmio_w(MMIO0, 0x50, 1);
    g.wait_used(RING1, 1);
    g.poweroff();

    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.console = Some(guest_end);
    let mut vm = KvmVm::start(cfg).unwrap();
    assert!(vm.cmdline().contains("virtio_mmio.device=4K@0xd0000000:5"));
    host.write_all(b"ping over virtio").unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut echo = [0u8; 16];
    host.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping over virtio");
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    drop(vm);
    // The VM's end of the stream is closed.
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(host);
    leaks.finish();
}

#[test]
fn virtio_net_frames_in_and_out_and_malformed_chains_dropped() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    // receiveq: one 2 KiB buffer. transmitq: a chain outside guest memory,
    // then the received buffer (header + frame) sent back.
    g.desc(RING0, 0, BUF, 2048, F_WRITE, 0);
    g.avail(RING0, &[0]);
    g.desc(RING1, 0, 0xffff_0000_0000, 64, 0, 0);
    g.desc(RING1, 1, BUF, 0, 0, 0);
    g.virtio_init(MMIO0, &[(0, RING0), (1, RING1)]);
    g.mmio_w(MMIO0, 0x50, 0);
    g.wait_used(RING0, 1);
    let a = &mut g.a;
    a.mov(rsi, RING0 + 0x200).unwrap();
    a.mov(eax, dword_ptr(rsi + 8)).unwrap(); // used.ring[0].len
    a.mov(rdi, RING1 + 16).unwrap();
    a.mov(dword_ptr(rdi + 8), eax).unwrap(); // tx desc 1 len
    a.mov(rdi, RING1 + 0x100).unwrap();
    a.mov(word_ptr(rdi + 4), 0u32).unwrap(); // avail.ring[0] = 0 (bad)
    a.mov(word_ptr(rdi + 6), 1u32).unwrap(); // avail.ring[1] = 1
    a.mov(word_ptr(rdi + 2), 2u32).unwrap(); // avail.idx = 2
    g.mmio_w(MMIO0, 0x50, 1);
    g.wait_used(RING1, 2);
    g.poweroff();

    let (mut host, nic_end) = UnixStream::pair().unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.net = Some(nook_vmm::KvmNetConfig {
        mac: [2, 0, 0, 0, 0, 9],
        stream: nic_end,
    });
    let mut vm = KvmVm::start(cfg).unwrap();
    let frame: Vec<u8> = (0..200u8).collect();
    host.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    host.write_all(&frame).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut len = [0u8; 4];
    host.read_exact(&mut len).unwrap();
    let mut echo = vec![0u8; u32::from_be_bytes(len) as usize];
    host.read_exact(&mut echo).unwrap();
    assert_eq!(
        echo, frame,
        "the frame came back without its virtio-net header"
    );
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    drop(vm);
    // Only the good chain became a frame; then the VM's end closed.
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    drop(host);
    leaks.finish();
}

/// Guest issuing: write sector 1 (0x5a), read sector 0, GET_ID.
fn block_guest() -> Guest {
    let mut g = Guest::new();
    let (hdr, data, status) = (BUF, BUF + 0x1000, BUF + 0x3000);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&1u32.to_le_bytes());
    h[8..].copy_from_slice(&1u64.to_le_bytes());
    g.put(hdr, &h); // OUT, sector 1
    let mut h = [0u8; 16];
    h[8..].copy_from_slice(&0u64.to_le_bytes());
    g.put(hdr + 0x100, &h); // IN, sector 0
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&8u32.to_le_bytes());
    g.put(hdr + 0x200, &h); // GET_ID
    g.put(data, &[0x5a; 512]);
    g.put(status, &[0xff; 3]);
    g.desc(RING0, 0, hdr, 16, F_NEXT, 1);
    g.desc(RING0, 1, data, 512, F_NEXT, 2);
    g.desc(RING0, 2, status, 1, F_WRITE, 0);
    g.desc(RING0, 3, hdr + 0x100, 16, F_NEXT, 4);
    g.desc(RING0, 4, data + 0x1000, 512, F_NEXT | F_WRITE, 5);
    g.desc(RING0, 5, status + 1, 1, F_WRITE, 0);
    g.desc(RING0, 6, hdr + 0x200, 16, F_NEXT, 7);
    g.desc(RING0, 7, data + 0x1800, 20, F_NEXT | F_WRITE, 8);
    g.desc(RING0, 8, status + 2, 1, F_WRITE, 0);
    g.avail(RING0, &[0, 3, 6]);
    g.virtio_init(MMIO0, &[(0, RING0)]);
    g.mmio_w(MMIO0, 0x50, 0);
    g.wait_used(RING0, 3);
    g.poweroff();
    g
}

fn disk_image(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, content).unwrap();
    path
}

fn run_block_guest(read_only: bool) -> (Vec<u8>, [u8; 3], Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path());
    let serial = SharedBuf::default();
    let mut cfg = config(&block_guest().write(dir.path()), &serial);
    cfg.disks.push(KvmDiskConfig {
        path: disk.clone(),
        read_only,
        id: "nook-test-disk".into(),
    });
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    let mem = vm.guest_memory();
    let mut status = [0u8; 3];
    mem.read_slice(&mut status, GuestAddress(BUF + 0x3000))
        .unwrap();
    let mut read = vec![0u8; 512];
    mem.read_slice(&mut read, GuestAddress(BUF + 0x2000))
        .unwrap();
    let mut id = vec![0u8; 20];
    mem.read_slice(&mut id, GuestAddress(BUF + 0x2800)).unwrap();
    drop(vm);
    (std::fs::read(&disk).unwrap(), status, read, id)
}

#[test]
fn virtio_block_reads_writes_and_identifies() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let (file, status, read, id) = run_block_guest(false);
    assert_eq!(status, [0, 0, 0], "OUT, IN, GET_ID all OK");
    assert!(
        file[512..1024].iter().all(|&b| b == 0x5a),
        "write reached the file"
    );
    assert_eq!(&read[..], &file[..512], "read returned sector 0");
    assert_eq!(&id[..14], b"nook-test-disk");
    leaks.finish();
}

#[test]
fn virtio_block_read_only_refuses_writes() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let (file, status, read, _) = run_block_guest(true);
    assert_eq!(status, [1, 0, 0], "OUT gets IOERR, IN and GET_ID work");
    assert_eq!(file[512], (512 % 251) as u8, "file unchanged");
    assert_eq!(&read[..], &file[..512]);
    leaks.finish();
}

#[test]
fn virtio_rng_fills_buffers() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    g.desc(RING0, 0, BUF, 64, F_WRITE, 0);
    g.avail(RING0, &[0]);
    g.virtio_init(MMIO0, &[(0, RING0)]);
    g.mmio_w(MMIO0, 0x50, 0);
    g.wait_used(RING0, 1);
    g.poweroff();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.rng = true;
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    let mut used_len = [0u8; 4];
    vm.guest_memory()
        .read_slice(&mut used_len, GuestAddress(RING0 + 0x200 + 8))
        .unwrap();
    assert_eq!(u32::from_le_bytes(used_len), 64);
    let mut buf = [0u8; 64];
    vm.guest_memory()
        .read_slice(&mut buf, GuestAddress(BUF))
        .unwrap();
    assert!(buf.iter().filter(|&&b| b != 0).count() > 32);
    drop(vm);
    leaks.finish();
}

#[test]
fn hostile_guest_fails_devices_not_the_host() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::new();
    let disk_base = MMIO0 + 0x1000;
    // 1. Nonsense into every register of the console (device 0).
    for off in (0..0x200).step_by(4) {
        for v in [u32::MAX, 0x8000_0000, 0x7f, 1, 0] {
            g.mmio_w(MMIO0, off, v);
        }
    }
    // 2. Malformed chains for the disk (device 1): a self-loop, a header
    //    outside guest memory followed by a zero-length buffer and a 4 GiB
    //    one, a lone zero-length descriptor, a lone huge one.
    g.desc(RING0, 0, BUF, 16, F_NEXT, 0);
    g.desc(RING0, 1, 0xffff_ffff_0000, 16, F_NEXT, 2);
    g.desc(RING0, 2, BUF, 0, F_NEXT | F_WRITE, 3);
    g.desc(RING0, 3, BUF + 0x1000, u32::MAX, F_WRITE, 0);
    g.desc(RING0, 4, BUF, 0, 0, 0);
    g.desc(RING0, 5, 0x7fff_f000, u32::MAX, F_WRITE, 0);
    g.desc(RING0, 6, BUF, 16, F_NEXT, 200); // next out of range
    g.avail(RING0, &[0, 1, 4, 5, 6, 3]);
    g.virtio_init(disk_base, &[(0, RING0)]);
    g.mmio_w(disk_base, 0x50, 0);
    g.wait_used(RING0, 6);
    g.serial_byte(b'1');
    // 3. A bogus available index: the device must fail (NEEDS_RESET).
    let a = &mut g.a;
    a.mov(rdi, RING0 + 0x100).unwrap();
    a.mov(word_ptr(rdi + 2), 1000u32).unwrap();
    g.mmio_w(disk_base, 0x50, 0);
    // Spin until the status register shows DEVICE_NEEDS_RESET.
    let mut l = g.a.create_label();
    g.a.mov(rbx, disk_base).unwrap();
    g.a.set_label(&mut l).unwrap();
    g.a.pause().unwrap();
    g.a.mov(eax, dword_ptr(rbx + 0x70)).unwrap();
    g.a.test(eax, 0x40u32).unwrap();
    g.a.jz(l).unwrap();
    g.serial_al();
    g.poweroff();

    let (host, guest_end) = UnixStream::pair().unwrap();
    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.console = Some(guest_end);
    cfg.disks.push(KvmDiskConfig {
        path: disk_image(dir.path()),
        read_only: false,
        id: String::new(),
    });
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    let out = serial.contents();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], b'1');
    assert_ne!(out[1] & 0x40, 0, "status shows DEVICE_NEEDS_RESET");
    drop(vm);
    drop(host);
    leaks.finish();
}

#[test]
fn bad_configurations_are_errors() {
    let _l = serial_lock();
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = KvmConfig::new(dir.path().join("nope"));
    let e = KvmVm::start(missing).unwrap_err();
    assert!(matches!(e, nook_vmm::VmmError::Boot(_)), "{e:?}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, [0u8; 8192]).unwrap();
    assert!(KvmVm::start(KvmConfig::new(&junk)).is_err());
    let mut g = Guest::new();
    g.poweroff();
    let mut cfg = KvmConfig::new(g.write(dir.path()));
    cfg.disks.push(KvmDiskConfig {
        path: dir.path().join("no-disk"),
        read_only: true,
        id: String::new(),
    });
    assert!(matches!(
        KvmVm::start(cfg).unwrap_err(),
        nook_vmm::VmmError::Block(_)
    ));
    leaks.finish();
}

#[test]
fn virtio_fs_serves_a_guest_over_mmio() {
    let _l = serial_lock();
    if !kvm_or_skip() {
        return;
    }
    let leaks = LeakCheck::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello"), b"hi").unwrap();
    // The guest reads the tag's first byte from the config space, sends
    // INIT, LOOKUP "hello" and LOOKUP ".." on the request queue (queue 1),
    // waits for all three, and powers off.
    let mut g = Guest::new();
    let init: Vec<u8> = [7u32, 31, 1 << 20, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let requests = [
        fuse_message(26, 1, 0, &init),
        fuse_message(1, 2, 1, b"hello\0"),
        fuse_message(1, 3, 1, b"..\0"),
    ];
    for (i, m) in requests.iter().enumerate() {
        let (req, reply) = (BUF + 0x1000 * i as u64, BUF + 0x8000 + 0x1000 * i as u64);
        g.put(req, m);
        let d = 2 * i as u16;
        g.desc(RING1, d, req, m.len() as u32, F_NEXT, d + 1);
        g.desc(RING1, d + 1, reply, 4096, F_WRITE, 0);
    }
    g.avail(RING1, &[0, 2, 4]);
    g.a.mov(rbx, MMIO0).unwrap();
    g.a.mov(al, byte_ptr(rbx + 0x100)).unwrap();
    g.serial_al();
    g.virtio_init(MMIO0, &[(0, RING0), (1, RING1)]);
    g.mmio_w(MMIO0, 0x50, 1);
    g.wait_used(RING1, 3);
    g.poweroff();

    let serial = SharedBuf::default();
    let mut cfg = config(&g.write(dir.path()), &serial);
    cfg.shares.push(share_config(shared.path(), "nook0"));
    let mut vm = KvmVm::start(cfg).unwrap();
    assert_eq!(run(&mut vm), ExitReason::PowerOff);
    assert_eq!(serial.contents(), b"n", "the tag in the config space");
    let mem = vm.guest_memory();
    let used = |i: u64| {
        let mut e = [0u8; 8];
        mem.read_slice(&mut e, GuestAddress(RING1 + 0x204 + 8 * i))
            .unwrap();
        u32::from_le_bytes(e[4..].try_into().unwrap())
    };
    let reply = |i: u64| {
        let mut h = [0u8; 16];
        mem.read_slice(&mut h, GuestAddress(BUF + 0x8000 + 0x1000 * i))
            .unwrap();
        let error = i32::from_le_bytes(h[4..8].try_into().unwrap());
        (error, u64::from_le_bytes(h[8..].try_into().unwrap()))
    };
    assert_eq!(reply(0), (0, 1), "INIT");
    assert_eq!((reply(1), used(1)), ((0, 2), 16 + 128), "LOOKUP hello");
    let (error, unique) = reply(2);
    assert!(error < 0 && unique == 3, "LOOKUP .. gave {error}");
    drop(vm);
    leaks.finish();
}
