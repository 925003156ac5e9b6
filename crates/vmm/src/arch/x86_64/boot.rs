//! Loading a guest: kernel (bzImage, PVH ELF or plain 64-bit ELF), initrd,
//! command line and boot information (Linux zero page or PVH start info).

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    memory_map, ram_ranges, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR,
    PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use super::payload::{extract_pvh_vmlinux, PayloadCompression};
use super::regs::EntryMode;

/// Errors loading a guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image cannot be opened or read.
    #[error("cannot read kernel image {path}")]
    KernelIo {
        /// Kernel path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is not a loadable ELF or bzImage.
    #[error("cannot load kernel image {path}")]
    KernelLoad {
        /// Kernel path.
        path: PathBuf,
        /// Loader error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The bzImage has no 64-bit entry point.
    #[error("kernel image {0} has no 64-bit entry point (boot protocol 2.06+ with XLF_KERNEL_64 needed)")]
    Not64Bit(PathBuf),
    /// The command line is too long.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a nul byte")]
    CmdlineNul,
    /// The initrd cannot be opened or read.
    #[error("cannot read initrd {path}")]
    InitrdIo {
        /// Initrd path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory")]
    InitrdTooLarge {
        /// Initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Writing boot data to guest memory failed.
    #[error("cannot write boot data to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// The kernel image formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Linux bzImage, entered at its 64-bit entry point (its own
    /// decompressor runs in the guest).
    BzImage,
    /// Linux bzImage whose payload was decompressed on the host: the
    /// `vmlinux` inside is loaded and entered through PVH (see
    /// [`super::payload`]).
    BzImagePvh,
    /// ELF with a Xen PVH note (e.g. Linux `vmlinux`), entered in 32-bit mode.
    PvhElf,
    /// Any other 64-bit ELF, entered in long mode at `e_entry`.
    Elf64,
}

/// What the boot vCPU needs to start the loaded guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSetup {
    /// Entry point (guest physical).
    pub entry: u64,
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// Detected image format.
    pub format: KernelFormat,
}

/// What to load.
#[derive(Debug)]
pub struct GuestImage<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Optional initial ramdisk.
    pub initrd: Option<&'a Path>,
    /// Full command line (with any device parameters already appended).
    pub cmdline: &'a str,
    /// Guest RAM size in bytes.
    pub memory_bytes: u64,
    /// RSDP address to hand to the guest (0 for none).
    pub rsdp: u64,
}

const XLF_KERNEL_64: u16 = 1;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;

/// Loads kernel, initrd and command line and writes the boot information.
pub fn load_guest(mem: &GuestMemoryMmap, img: &GuestImage<'_>) -> Result<BootSetup, BootError> {
    let kio = |source| BootError::KernelIo {
        path: img.kernel.to_path_buf(),
        source,
    };
    let kload = |source| BootError::KernelLoad {
        path: img.kernel.to_path_buf(),
        source,
    };
    let mut file = File::open(img.kernel).map_err(kio)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(kio)?;
    file.seek(SeekFrom::Start(0)).map_err(kio)?;

    let himem = Some(GuestAddress(HIMEM_START));
    let (setup, header, kernel_end) = if &magic == b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, himem).map_err(kload)?;
        (elf_setup(&r, KernelFormat::PvhElf), None, r.kernel_end)
    } else if let Some((limits, vmlinux)) = bzimage_fast_path(&mut file, img.kernel)? {
        // The kernel inside the bzImage, entered through PVH.
        let r = Elf::load(mem, None, &mut Cursor::new(&vmlinux[..]), himem).map_err(kload)?;
        let setup = elf_setup(&r, KernelFormat::BzImagePvh);
        // Were the loader to see no PVH note after all, the vmlinux would be
        // entered as a plain ELF, without the bzImage's setup header.
        let limits = (setup.mode == EntryMode::Pvh32).then_some(limits);
        (setup, limits, r.kernel_end)
    } else {
        file.seek(SeekFrom::Start(0)).map_err(kio)?;
        let r = BzImage::load(mem, None, &mut file, himem).map_err(kload)?;
        let hdr = r
            .setup_header
            .filter(|h| h.version >= 0x206 && h.xloadflags & XLF_KERNEL_64 != 0)
            .ok_or_else(|| BootError::Not64Bit(img.kernel.to_path_buf()))?;
        let setup = BootSetup {
            entry: r.kernel_load.0 + 0x200,
            mode: EntryMode::Long64,
            format: KernelFormat::BzImage,
        };
        (setup, Some(hdr), r.kernel_end)
    };

    // Command line.
    let max = match header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(CMDLINE_MAX),
        _ => CMDLINE_MAX,
    };
    let cmdline = img.cmdline.as_bytes();
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let mut cbytes = cmdline.to_vec();
    cbytes.push(0);
    mem.write_slice(&cbytes, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::Memory)?;

    // Initrd at the top of low memory.
    let initrd = match img.initrd {
        Some(path) => {
            let max_addr = header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&m| m != 0)
                .unwrap_or(0x37ff_ffff);
            Some(load_initrd(
                mem,
                path,
                img.memory_bytes,
                kernel_end,
                max_addr,
            )?)
        }
        None => None,
    };

    let map = memory_map(img.memory_bytes);
    match setup.mode {
        EntryMode::Long64 => {
            let mut params = boot_params::default();
            if let Some(h) = header {
                params.hdr = h;
                params.hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
                params.hdr.heap_end_ptr = 0xfe00;
            } else {
                params.hdr.boot_flag = 0xaa55;
                params.hdr.header = 0x5372_6448; // "HdrS"
                params.hdr.kernel_alignment = 0x100_0000;
            }
            params.hdr.type_of_loader = 0xff;
            params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            params.hdr.cmdline_size = cmdline.len() as u32;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            params.acpi_rsdp_addr = img.rsdp;
            for (i, (addr, size, kind)) in map.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    type_: *kind as u32,
                };
            }
            params.e820_entries = map.len() as u8;
            mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(BootError::Memory)?;
        }
        EntryMode::Pvh32 => {
            for (i, (addr, size, kind)) in map.iter().enumerate() {
                let entry = hvm_memmap_table_entry {
                    addr: *addr,
                    size: *size,
                    type_: *kind as u32,
                    reserved: 0,
                };
                mem.write_obj(
                    entry,
                    GuestAddress(PVH_MEMMAP_ADDR + (i * std::mem::size_of_val(&entry)) as u64),
                )
                .map_err(BootError::Memory)?;
            }
            let mut info = hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                cmdline_paddr: CMDLINE_ADDR,
                rsdp_paddr: img.rsdp,
                memmap_paddr: PVH_MEMMAP_ADDR,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            if let Some((addr, size)) = initrd {
                let module = hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                };
                mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))
                    .map_err(BootError::Memory)?;
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_ADDR;
            }
            mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
                .map_err(BootError::Memory)?;
        }
    }
    Ok(setup)
}

fn elf_setup(r: &KernelLoaderResult, pvh_format: KernelFormat) -> BootSetup {
    match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => BootSetup {
            entry: addr.0,
            mode: EntryMode::Pvh32,
            format: pvh_format,
        },
        _ => BootSetup {
            entry: r.kernel_load.0,
            mode: EntryMode::Long64,
            format: KernelFormat::Elf64,
        },
    }
}

/// The bzImage fast path: if the image's payload decompresses on the host
/// into a `vmlinux` with a PVH note, returns that `vmlinux` and the setup
/// header fields that still apply (command-line size, initrd limit).
/// `None` sends the caller down the classic path (the reason is logged).
fn bzimage_fast_path(
    file: &mut File,
    path: &Path,
) -> Result<Option<(setup_header, Vec<u8>)>, BootError> {
    let kio = |source| BootError::KernelIo {
        path: path.to_path_buf(),
        source,
    };
    let mut image = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(kio)?;
    file.read_to_end(&mut image).map_err(kio)?;
    let t0 = std::time::Instant::now();
    match extract_pvh_vmlinux(&image) {
        Ok((info, vmlinux)) => {
            tracing::debug!(
                "vmm: {}: {} payload decompressed on the host ({} bytes, {:?}); entering through pvh",
                path.display(),
                PayloadCompression::detect(info.payload),
                vmlinux.len(),
                t0.elapsed()
            );
            let hdr = setup_header {
                version: info.version,
                cmdline_size: info.cmdline_size,
                initrd_addr_max: info.initrd_addr_max,
                ..Default::default()
            };
            Ok(Some((hdr, vmlinux)))
        }
        Err(why) => {
            tracing::debug!(
                "vmm: {}: no host-side decompression ({why}); booting the bzImage's own decompressor",
                path.display()
            );
            Ok(None)
        }
    }
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    memory_bytes: u64,
    kernel_end: u64,
    max_addr: u64,
) -> Result<(u64, u64), BootError> {
    let io = |source| BootError::InitrdIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let low_end = ram_ranges(memory_bytes)[0].len;
    let top = low_end.min(max_addr.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(BootError::Memory)?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A minimal ELF64 with one PT_LOAD segment at 2 MiB.
    fn tiny_elf(code: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little endian
        e[6] = 1;
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 0x40;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
        e[ph + 16..ph + 24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        e[ph + 24..ph + 32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        e.extend_from_slice(code);
        e
    }

    #[test]
    fn plain_elf_is_entered_in_long_mode_with_zero_page() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        std::fs::write(&kernel, tiny_elf(&[0xf4])).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"initrd-bytes").unwrap();
        let m = mem();
        let setup = load_guest(
            &m,
            &GuestImage {
                kernel: &kernel,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0",
                memory_bytes: 16 << 20,
                rsdp: 0xe0000,
            },
        )
        .unwrap();
        assert_eq!(setup.format, KernelFormat::Elf64);
        assert_eq!(setup.mode, EntryMode::Long64);
        assert_eq!(setup.entry, 0x20_0000);
        let b: u8 = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, 0xf4);
        let params: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ params.e820_entries }, 3);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        let (ra, rs) = ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size });
        assert_eq!(rs, 12);
        let mut got = [0u8; 12];
        m.read_slice(&mut got, GuestAddress(u64::from(ra))).unwrap();
        assert_eq!(&got, b"initrd-bytes");
        let mut cmd = [0u8; 14];
        m.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    /// `tiny_elf` plus a PT_NOTE with the Xen PVH entry note.
    fn tiny_pvh_elf(code: &[u8]) -> Vec<u8> {
        let mut e = tiny_elf(code);
        let mut note = Vec::new();
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x20_0000u32.to_le_bytes());
        let note_off = e.len() as u64;
        e.extend_from_slice(&note);
        // Second program header: the first starts at 0x40 and the code at
        // 0x78, so move the code (and its offset) back by one header.
        let code_start = 0x78;
        let tail = e.split_off(code_start);
        let mut ph = vec![0u8; 0x38];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&(note_off + 0x38).to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend_from_slice(&ph);
        e.extend_from_slice(&tail);
        e[56..58].copy_from_slice(&2u16.to_le_bytes()); // phnum
        e[0x48..0x50].copy_from_slice(&(0x78u64 + 0x38).to_le_bytes()); // code offset
        e
    }

    /// A bzImage-shaped file whose payload is `vmlinux`, LZ4-compressed.
    fn bzimage_of(vmlinux: &[u8]) -> Vec<u8> {
        let mut payload = 0x184c_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(vmlinux);
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&64u32.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&payload);
        img
    }

    #[test]
    fn bzimage_with_pvh_payload_is_entered_through_pvh() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, bzimage_of(&tiny_pvh_elf(&[0xf4, 0x90]))).unwrap();
        let m = mem();
        let img = GuestImage {
            kernel: &kernel,
            initrd: None,
            cmdline: "console=ttyS0",
            memory_bytes: 16 << 20,
            rsdp: 0xe0000,
        };
        let setup = load_guest(&m, &img).unwrap();
        assert_eq!(setup.format, KernelFormat::BzImagePvh);
        assert_eq!(setup.mode, EntryMode::Pvh32);
        assert_eq!(setup.entry, 0x20_0000);
        let code: [u8; 2] = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, [0xf4, 0x90]);
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!({ info.cmdline_paddr }, CMDLINE_ADDR);
        // The bzImage's cmdline_size (64) still bounds the command line.
        let long = "x".repeat(65);
        let img = GuestImage {
            cmdline: &long,
            ..img
        };
        assert!(matches!(
            load_guest(&m, &img),
            Err(BootError::CmdlineTooLong { max: 64, .. })
        ));
    }

    #[test]
    fn garbage_kernel_and_long_cmdline_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("junk");
        std::fs::write(&kernel, vec![0x55u8; 4096]).unwrap();
        let m = mem();
        let img = GuestImage {
            kernel: &kernel,
            initrd: None,
            cmdline: "",
            memory_bytes: 16 << 20,
            rsdp: 0,
        };
        assert!(matches!(
            load_guest(&m, &img),
            Err(BootError::KernelLoad { .. })
        ));
        std::fs::write(&kernel, tiny_elf(&[0xf4])).unwrap();
        let long = "x".repeat(CMDLINE_MAX + 1);
        let img = GuestImage {
            cmdline: &long,
            ..img
        };
        assert!(matches!(
            load_guest(&m, &img),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }
}
