//! Reading guest memory the way the guest sees it: linear addresses
//! translated through the guest's own page tables (what a vCPU's RIP
//! means), for reports such as the code at a faulting instruction.
//!
//! Covers what an x86_64 guest can be in: paging off, 32-bit paging (with
//! 4 MiB pages), PAE, 4-level and 5-level paging (with 2 MiB and 1 GiB
//! pages). Everything is read through bounds-checked guest memory
//! accesses; an address that does not translate is `None`, never a panic.

use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical address bits 12..52 of a 64-bit table entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Longest x86 instruction.
pub const MAX_INSTRUCTION_BYTES: usize = 15;

/// The paging state of a vCPU: which tables translate its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingMode {
    /// CR0.
    pub cr0: u64,
    /// CR3: the root table.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl PagingMode {
    /// The paging state in `sregs`.
    pub fn of(sregs: &kvm_sregs) -> Self {
        Self {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        }
    }

    /// The guest physical address of the linear address `la`, if it is
    /// mapped (present at every level).
    pub fn translate(&self, mem: &GuestMemoryMmap, la: u64) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return Some(la & 0xffff_ffff);
        }
        if self.efer & EFER_LMA != 0 {
            let levels = if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
            return walk64(mem, self.cr3 & ADDR_MASK, la, levels);
        }
        if self.cr4 & CR4_PAE != 0 {
            let la = la & 0xffff_ffff;
            // The PDPT: four 8-byte entries at CR3[31:5].
            let pdpte = read_u64(mem, (self.cr3 & 0xffff_ffe0) + 8 * (la >> 30))?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            return walk64(mem, pdpte & ADDR_MASK, la, 2);
        }
        let la = la & 0xffff_ffff;
        let pde = u64::from(read_u32(mem, (self.cr3 & 0xffff_f000) + 4 * (la >> 22))?);
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & PAGE_SIZE_BIT != 0 && self.cr4 & CR4_PSE != 0 {
            // 4 MiB page: bits 31:22, plus bits 39:32 from PDE bits 20:13.
            let high = ((pde >> 13) & 0xff) << 32;
            return Some(high | (pde & 0xffc0_0000) | (la & 0x3f_ffff));
        }
        let pte = u64::from(read_u32(
            mem,
            (pde & 0xffff_f000) + 4 * ((la >> 12) & 0x3ff),
        )?);
        (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (la & 0xfff))
    }

    /// Up to `len` bytes at linear address `la`, page by page, stopping at
    /// the first page that does not translate.
    pub fn read(&self, mem: &GuestMemoryMmap, la: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = la.wrapping_add(out.len() as u64);
            let Some(pa) = self.translate(mem, at) else {
                break;
            };
            let in_page = (0x1000 - (at & 0xfff)) as usize;
            let mut chunk = vec![0u8; in_page.min(len - out.len())];
            if mem.read_slice(&mut chunk, GuestAddress(pa)).is_err() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }
}

/// The code at the vCPU's instruction pointer (CS base + `rip`), up to one
/// whole instruction's worth of bytes.
pub fn code_at(mem: &GuestMemoryMmap, sregs: &kvm_sregs, rip: u64) -> Vec<u8> {
    // In 64-bit mode the CS base is ignored (zero).
    let base = if sregs.cs.l != 0 { 0 } else { sregs.cs.base };
    PagingMode::of(sregs).read(mem, base.wrapping_add(rip), MAX_INSTRUCTION_BYTES)
}

/// Walks `levels` levels of 64-bit entries from the table at `table`
/// (4 or 5 for long mode, 2 below a PAE PDPT).
fn walk64(mem: &GuestMemoryMmap, mut table: u64, la: u64, levels: u32) -> Option<u64> {
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read_u64(mem, table + 8 * ((la >> shift) & 0x1ff))?;
        if entry & PRESENT == 0 {
            return None;
        }
        // A large page at the PDPT (1 GiB) or PD (2 MiB) level.
        if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
            let page = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page) | (la & page));
        }
        table = entry & ADDR_MASK;
    }
    Some(table | (la & 0xfff))
}

fn read_u64(mem: &GuestMemoryMmap, pa: u64) -> Option<u64> {
    mem.read_obj::<u64>(GuestAddress(pa)).ok()
}

fn read_u32(mem: &GuestMemoryMmap, pa: u64) -> Option<u32> {
    mem.read_obj::<u32>(GuestAddress(pa)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;

    const LONG: PagingMode = PagingMode {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    fn put(mem: &GuestMemoryMmap, pa: u64, v: u64) {
        mem.write_obj(v, GuestAddress(pa)).unwrap();
    }

    /// A kernel-style mapping: 0xffff_ffff_8100_0000 -> 0x8_0000 through
    /// 4 KiB pages, 0xffff_8880_0000_0000 -> 0 through a 2 MiB page.
    fn long_mode_tables(mem: &GuestMemoryMmap) {
        let la: u64 = 0xffff_ffff_8100_0000;
        let idx = |la: u64, level: u32| (la >> (12 + 9 * (level - 1))) & 0x1ff;
        put(mem, 0x1000 + 8 * idx(la, 4), 0x2000 | 3);
        put(mem, 0x2000 + 8 * idx(la, 3), 0x3000 | 3);
        put(mem, 0x3000 + 8 * idx(la, 2), 0x4000 | 3);
        put(mem, 0x4000 + 8 * idx(la, 1), 0x8_0000 | 3);
        put(mem, 0x4000 + 8 * (idx(la, 1) + 1), 0x9_0000 | 3);
        let direct: u64 = 0xffff_8880_0000_0000;
        put(mem, 0x1000 + 8 * idx(direct, 4), 0x5000 | 3);
        put(mem, 0x5000 + 8 * idx(direct, 3), 0x6000 | 3);
        put(mem, 0x6000 + 8 * idx(direct, 2), PAGE_SIZE_BIT | 3);
    }

    #[test]
    fn long_mode_walks_4k_and_2m_pages_and_stops_at_holes() {
        let mem = guest_memory();
        long_mode_tables(&mem);
        let m = LONG;
        assert_eq!(m.translate(&mem, 0xffff_ffff_8100_0123), Some(0x8_0123));
        assert_eq!(m.translate(&mem, 0xffff_ffff_8100_1ff0), Some(0x9_0ff0));
        assert_eq!(m.translate(&mem, 0xffff_8880_0001_2345), Some(0x1_2345));
        assert_eq!(m.translate(&mem, 0xffff_ffff_8100_2000), None);
        assert_eq!(m.translate(&mem, 0x40_0000), None);

        // An instruction crossing from one mapped page into the next.
        mem.write_slice(&[0xf0, 0x48, 0x0f], GuestAddress(0x8_0ffd))
            .unwrap();
        mem.write_slice(&[0xc7, 0x4d, 0x20], GuestAddress(0x9_0000))
            .unwrap();
        let code = m.read(&mem, 0xffff_ffff_8100_0ffd, 6);
        assert_eq!(code, [0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20]);
        // Only the mapped part of a read that runs into a hole.
        assert_eq!(m.read(&mem, 0xffff_ffff_8100_1ffe, 8).len(), 2);
        // A table pointing outside guest memory is no translation.
        put(&mem, 0x4000 + 8 * 5, 0x7fff_f000 | 3);
        assert_eq!(m.read(&mem, 0xffff_ffff_8100_5000, 4), Vec::<u8>::new());
    }

    #[test]
    fn five_level_1g_pae_32bit_and_unpaged_modes() {
        let mem = guest_memory();
        // 5-level: one more table on top; a 1 GiB page at the PDPT.
        let m = PagingMode {
            cr4: CR4_PAE | CR4_LA57,
            ..LONG
        };
        put(&mem, 0x1000, 0x2000 | 3); // PML5[0]
        put(&mem, 0x2000, 0x3000 | 3); // PML4[0]
        put(&mem, 0x3000 + 8, (1 << 30) | PAGE_SIZE_BIT | 3); // PDPT[1]
        assert_eq!(m.translate(&mem, 0x4000_0042), Some(0x4000_0042));

        // PAE: PDPT at CR3, then PD (2 MiB page) and PT.
        let pae = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0x8000,
            cr4: CR4_PAE,
            efer: 0,
        };
        put(&mem, 0x8000 + 8 * 3, 0x9000 | 1); // PDPT[3]: 0xc000_0000..
        put(&mem, 0x9000, 0xa000 | 3); // PD[0] -> PT
        put(&mem, 0xa000 + 8 * 2, 0x5_5000 | 3); // PT[2]
        put(&mem, 0x9000 + 8, 0x20_0000 | PAGE_SIZE_BIT | 3); // PD[1], 2 MiB
        assert_eq!(pae.translate(&mem, 0xc000_2abc), Some(0x5_5abc));
        assert_eq!(pae.translate(&mem, 0xc020_1234), Some(0x20_1234));
        assert_eq!(pae.translate(&mem, 0x1000), None);

        // 32-bit paging with a 4 MiB page and a 4 KiB page.
        let legacy = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0xb000,
            cr4: CR4_PSE,
            efer: 0,
        };
        mem.write_obj(0x0040_0000u32 | 0x83, GuestAddress(0xb000 + 4 * 768))
            .unwrap();
        mem.write_obj(0xc000u32 | 3, GuestAddress(0xb000)).unwrap();
        mem.write_obj(0x7_7000u32 | 3, GuestAddress(0xc000 + 4 * 5))
            .unwrap();
        assert_eq!(legacy.translate(&mem, 0xc012_3456), Some(0x52_3456));
        assert_eq!(legacy.translate(&mem, 0x5123), Some(0x7_7123));

        // Paging off: linear is physical.
        let off = PagingMode {
            cr0: 1,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(off.translate(&mem, 0x1234), Some(0x1234));
    }
}
