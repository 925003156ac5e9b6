//! Test support: tiny long-mode guests assembled with iced-x86, packaged as
//! plain 64-bit ELF files, plus leak accounting and a shared serial sink.
#![allow(dead_code)]

pub mod kernel;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

/// Where guest code is loaded and entered.
pub const CODE_ADDR: u64 = 0x20_0000;
/// Where the guest's data segment (rings, buffers) is loaded.
pub const DATA_ADDR: u64 = 0x30_0000;
/// Size of the data segment.
pub const DATA_SIZE: usize = 0x2_0000;
/// First virtio-mmio window.
pub const MMIO0: u64 = 0xd000_0000;

/// Tests in one binary share process-wide thread and fd counts: run them
/// one at a time.
pub fn serial_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads of this process whose name starts with `nook-`.
pub fn nook_threads() -> Vec<String> {
    let mut names = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let comm = t.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            if name.starts_with("nook-") {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Process fds before a test, checked again after, along with the absence
/// of `nook-*` threads (the test harness's own threads come and go, so the
/// total task count is not compared).
pub struct LeakCheck {
    fds: usize,
}

impl LeakCheck {
    pub fn start() -> Self {
        assert!(
            nook_threads().is_empty(),
            "leftover threads: {:?}",
            nook_threads()
        );
        Self { fds: fd_count() }
    }

    /// Asserts no `nook-*` thread and no extra fd is left.
    pub fn finish(self) {
        assert_eq!(nook_threads(), Vec::<String>::new(), "vmm threads leaked");
        assert_eq!(fd_count(), self.fds, "file descriptors leaked");
    }
}

/// A `Write` whose bytes the test can watch.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
    /// Waits until `pred(contents)` or the timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(&self.0.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }
}

/// A plain ELF64 executable with one PT_LOAD per segment (paddr = vaddr).
pub fn elf64(entry: u64, segments: &[(u64, &[u8])]) -> Vec<u8> {
    let phoff = 0x40usize;
    let data_off = phoff + 0x38 * segments.len();
    let mut e = vec![0u8; data_off];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&entry.to_le_bytes());
    e[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
    e[52..54].copy_from_slice(&0x40u16.to_le_bytes());
    e[54..56].copy_from_slice(&0x38u16.to_le_bytes());
    e[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (addr, bytes)) in segments.iter().enumerate() {
        let ph = phoff + 0x38 * i;
        let off = e.len() as u64;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        e[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        e[ph + 16..ph + 24].copy_from_slice(&addr.to_le_bytes());
        e[ph + 24..ph + 32].copy_from_slice(&addr.to_le_bytes());
        let len = bytes.len() as u64;
        e[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes());
        e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        e.extend_from_slice(bytes);
    }
    e
}

/// A guest under construction: code at [`CODE_ADDR`], data at [`DATA_ADDR`].
pub struct Guest {
    pub a: CodeAssembler,
    pub data: Vec<u8>,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    pub fn new() -> Self {
        Self {
            a: CodeAssembler::new(64).unwrap(),
            data: vec![0u8; DATA_SIZE],
        }
    }

    /// Writes `bytes` into the data segment at guest address `addr`.
    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        let off = (addr - DATA_ADDR) as usize;
        self.data[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// A split-ring descriptor at index `i` of the ring at `ring`.
    pub fn desc(&mut self, ring: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(ring + 16 * u64::from(i), &d);
    }

    /// Available ring (at `ring + 0x100`) with `heads` and idx = heads.len().
    pub fn avail(&mut self, ring: u64, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            self.put(ring + 0x104 + 2 * i as u64, &h.to_le_bytes());
        }
        self.put(ring + 0x102, &(heads.len() as u16).to_le_bytes());
    }

    /// `out 0x3f8, b`.
    pub fn serial_byte(&mut self, b: u8) {
        self.a.mov(dx, 0x3f8u32).unwrap();
        self.a.mov(al, u32::from(b)).unwrap();
        self.a.out(dx, al).unwrap();
    }

    /// Sends the low byte of `eax` to the serial port.
    pub fn serial_al(&mut self) {
        self.a.mov(dx, 0x3f8u32).unwrap();
        self.a.out(dx, al).unwrap();
    }

    /// 32-bit write to register `off` of the virtio-mmio window at `base`.
    pub fn mmio_w(&mut self, base: u64, off: i32, v: u32) {
        self.a.mov(rbx, base).unwrap();
        self.a.mov(dword_ptr(rbx + off), v).unwrap();
    }

    /// Linux-like virtio-mmio bring-up with queues `(index, ring base)`,
    /// each of 16 entries laid out desc / avail (+0x100) / used (+0x200).
    pub fn virtio_init(&mut self, base: u64, queues: &[(u32, u64)]) {
        self.mmio_w(base, 0x70, 1);
        self.mmio_w(base, 0x70, 3);
        self.mmio_w(base, 0x24, 1);
        self.mmio_w(base, 0x20, 1); // VIRTIO_F_VERSION_1
        self.mmio_w(base, 0x24, 0);
        self.mmio_w(base, 0x20, 0);
        self.mmio_w(base, 0x70, 0xb);
        for &(q, ring) in queues {
            self.mmio_w(base, 0x30, q);
            self.mmio_w(base, 0x38, 16);
            self.mmio_w(base, 0x80, ring as u32);
            self.mmio_w(base, 0x84, 0);
            self.mmio_w(base, 0x90, (ring + 0x100) as u32);
            self.mmio_w(base, 0x94, 0);
            self.mmio_w(base, 0xa0, (ring + 0x200) as u32);
            self.mmio_w(base, 0xa4, 0);
            self.mmio_w(base, 0x44, 1);
        }
        self.mmio_w(base, 0x70, 0xf);
    }

    /// Spins until the used index of the ring at `ring` reaches `n`.
    pub fn wait_used(&mut self, ring: u64, n: u32) {
        let mut l = self.a.create_label();
        self.a.mov(rsi, ring + 0x200).unwrap();
        self.a.set_label(&mut l).unwrap();
        self.a.pause().unwrap();
        self.a.movzx(eax, word_ptr(rsi + 2)).unwrap();
        self.a.cmp(eax, n).unwrap();
        self.a.jb(l).unwrap();
    }

    /// ACPI S5: the VM ends with PowerOff.
    pub fn poweroff(&mut self) {
        let mut l = self.a.create_label();
        self.a.mov(dx, 0x600u32).unwrap();
        self.a.mov(al, 0x34u32).unwrap();
        self.a.out(dx, al).unwrap();
        self.a.set_label(&mut l).unwrap();
        self.a.hlt().unwrap();
        self.a.jmp(l).unwrap();
    }

    /// Assembles into an ELF file in `dir`.
    pub fn write(mut self, dir: &Path) -> PathBuf {
        let code = self.a.assemble(CODE_ADDR).unwrap();
        let elf = elf64(CODE_ADDR, &[(CODE_ADDR, &code), (DATA_ADDR, &self.data)]);
        let path = dir.join("guest.elf");
        std::fs::write(&path, elf).unwrap();
        path
    }
}

/// nook's share server (a read-only share of `dir` tagged `tag`) as the
/// kvm engine wires it into a virtio-fs device.
#[allow(dead_code)] // Not every test binary has shares.
pub fn share_config(dir: &Path, tag: &str) -> nook_vmm::KvmShareConfig {
    #[derive(Debug)]
    struct Session(nook_fs::FuseSession);

    impl nook_vmm::FsServer for Session {
        fn handle(&self, r: &mut [u8], cap: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.handle(r, cap, out)
        }

        fn reach(&self) -> Option<nook_seccomp::FsReach> {
            Some(self.0.reach().clone())
        }
    }

    let share = nook_fs::Share {
        host_dir: dir.to_owned(),
        tag: tag.into(),
        read_only: true,
    };
    nook_vmm::KvmShareConfig {
        tag: tag.into(),
        server: Arc::new(Session(nook_fs::FuseSession::open(&share).unwrap())),
    }
}

/// A FUSE message: `struct fuse_in_header` (40 bytes) and `body`.
#[allow(dead_code)] // Not every test binary has shares.
pub fn fuse_message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    m.extend_from_slice(body);
    m
}
