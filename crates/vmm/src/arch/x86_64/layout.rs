//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (unused)
//! 0x0000_0500  GDT (4 entries), IDT (empty) at 0x520
//! 0x0000_6000  PVH start info, memory map at 0x6100, module list at 0x6800
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack (grows down)
//! 0x0000_9000  page tables: PML4, PDPT at 0xa000, 4 PDs at 0xb000..0xf000
//!              (identity map of the first 4 GiB with 2 MiB pages)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA start: e820 reserved up to 1 MiB
//! 0x000e_0000  ACPI tables (RSDP, XSDT, FADT, DSDT, MADT)
//! 0x0010_0000  kernel (bzImage protected-mode code; ELF at its own p_paddr)
//!   ...        initrd at the top of low memory
//! 0xc000_0000  32-bit MMIO gap (guest RAM above 3 GiB continues at 4 GiB)
//! 0xd000_0000  virtio-mmio devices, 4 KiB each
//! 0xfec0_0000  IOAPIC           0xfee0_0000 LAPIC
//! 0xfffb_c000  KVM identity map page, TSS at 0xfffb_d000
//! 0x1_0000_0000 guest RAM above the gap
//! ```

/// GDT location.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location (a single null entry).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map entries.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// PVH module list (initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6800;
/// Linux zero page.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for 64-bit entry.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line accepted (bytes, without the NUL).
pub const CMDLINE_MAX: usize = 0xffff;
/// Start of the EBDA; reserved in the e820 map up to [`HIMEM_START`].
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (the RSDP must sit 16-byte aligned in 0xe0000..0x100000).
pub const ACPI_ADDR: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// First byte of "high" memory; kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's identity-map page (needed on Intel without unrestricted guest).
pub const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// KVM's TSS pages (three pages).
pub const TSS_ADDR: u64 = 0xfffb_d000;

/// COM1 base port and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_CMD_PORT: u16 = 0x64;
/// ACPI sleep control register (FADT `SLEEP_CONTROL_REG`): writing
/// `SLP_EN | SLP_TYP=5` (0x34) powers the VM off.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (reads 0).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT `RESET_REG`): writing [`RESET_VALUE`] resets.
pub const RESET_PORT: u16 = 0x602;
/// Value written to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x1;

/// Interrupt lines handed to virtio-mmio devices, in order. Kept below 16 so
/// that they are identity-mapped ISA lines for Linux with or without ACPI.
pub const VIRTIO_IRQS: [u32; 10] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15];

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Splits `memory_bytes` of guest RAM around the 32-bit MMIO gap.
pub fn ram_ranges(memory_bytes: u64) -> Vec<RamRange> {
    if memory_bytes <= MMIO_GAP_START {
        vec![RamRange {
            start: 0,
            len: memory_bytes,
        }]
    } else {
        vec![
            RamRange {
                start: 0,
                len: MMIO_GAP_START,
            },
            RamRange {
                start: MMIO_GAP_END,
                len: memory_bytes - MMIO_GAP_START,
            },
        ]
    }
}

/// Kind of an e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (e820 type 1).
    Ram = 1,
    /// Reserved (e820 type 2).
    Reserved = 2,
}

/// The guest's memory map (what e820 and the PVH memmap report).
pub fn memory_map(memory_bytes: u64) -> Vec<(u64, u64, MemoryKind)> {
    let mut map = Vec::new();
    for r in ram_ranges(memory_bytes) {
        if r.start == 0 {
            map.push((0, EBDA_START, MemoryKind::Ram));
            map.push((EBDA_START, HIMEM_START - EBDA_START, MemoryKind::Reserved));
            if r.len > HIMEM_START {
                map.push((HIMEM_START, r.len - HIMEM_START, MemoryKind::Ram));
            }
        } else {
            map.push((r.start, r.len, MemoryKind::Ram));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range_and_a_hole_for_the_bios_area() {
        let mem = 128 << 20;
        assert_eq!(ram_ranges(mem), vec![RamRange { start: 0, len: mem }]);
        let map = memory_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2], (HIMEM_START, mem - HIMEM_START, MemoryKind::Ram));
    }

    #[test]
    fn big_guest_is_split_around_the_mmio_gap() {
        let mem = 4u64 << 30;
        let ranges = ram_ranges(mem);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[1].start, MMIO_GAP_END);
        assert_eq!(ranges[0].len + ranges[1].len, mem);
        const { assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START) };
    }
}
