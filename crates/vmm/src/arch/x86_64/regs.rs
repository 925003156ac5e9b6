//! vCPU register state for the two entry modes: 64-bit long mode (Linux
//! 64-bit boot protocol, plain ELF) and 32-bit protected mode without paging
//! (PVH). Also FPU, MSRs and LAPIC LINT0/LINT1 set-up.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};

/// Errors of vCPU register set-up.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A vCPU ioctl failed.
    #[error("cannot {op} on a vcpu")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Boot tables could not be written to guest memory.
    #[error("cannot write boot tables to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// KVM did not accept every MSR.
    #[error("kvm accepted {set} of {wanted} msrs")]
    Msrs {
        /// MSRs set.
        set: usize,
        /// MSRs asked for.
        wanted: usize,
    },
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { op, source }
}

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, paging on, RSI = zero page (Linux 64-bit boot
    /// protocol; also used for plain ELF guests).
    Long64,
    /// 32-bit protected mode, paging off, EBX = PVH start info.
    Pvh32,
}

// GDT: null, code, data, tss. Access/flags words as in the SDM.
const GDT_CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
const GDT_CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
const GDT_DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
const GDT_TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Converts a GDT descriptor into KVM's segment form (byte-granular limit).
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and (for long mode) identity-mapping page
/// tables for the first 4 GiB.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    let code = match mode {
        EntryMode::Long64 => GDT_CODE64,
        EntryMode::Pvh32 => GDT_CODE32,
    };
    let gdt = [0u64, code, GDT_DATA, GDT_TSS];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(RegsError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(RegsError::Memory)?;
    if mode == EntryMode::Long64 {
        mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))
            .map_err(RegsError::Memory)?;
        let mut pd = vec![0u8; 4096];
        for dir in 0..4u64 {
            let pd_addr = PD_ADDR + dir * 0x1000;
            mem.write_obj(pd_addr | 0x3, GuestAddress(PDPT_ADDR + dir * 8))
                .map_err(RegsError::Memory)?;
            for (j, chunk) in pd.chunks_exact_mut(8).enumerate() {
                // Present, writable, 2 MiB page.
                let entry = ((dir * 512 + j as u64) << 21) | 0x83;
                chunk.copy_from_slice(&entry.to_le_bytes());
            }
            mem.write_slice(&pd, GuestAddress(pd_addr))
                .map_err(RegsError::Memory)?;
        }
    }
    Ok(())
}

/// Sets the special registers for the entry mode.
pub fn setup_sregs(vcpu: &VcpuFd, mode: EntryMode) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    let code = match mode {
        EntryMode::Long64 => GDT_CODE64,
        EntryMode::Pvh32 => GDT_CODE32,
    };
    let code_seg = segment_from_gdt(code, 1);
    let data_seg = segment_from_gdt(GDT_DATA, 2);
    let tss_seg = segment_from_gdt(GDT_TSS, 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;
    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    match mode {
        EntryMode::Long64 => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh32 => {
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))
}

/// Sets general registers: entry point, stack and the boot-info pointer.
pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 => {
            regs.rsp = BOOT_STACK_ADDR;
            regs.rbp = BOOT_STACK_ADDR;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh32 => regs.rbx = PVH_INFO_ADDR,
    }
    vcpu.set_regs(&regs).map_err(kvm("set regs"))
}

/// Sets the x87/SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set fpu"))
}

/// Sets the boot MSRs (SYSENTER/SYSCALL cleared, fast strings, MTRRs on with
/// write-back default).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const MSRS: [(u32, u64); 11] = [
        (0x174, 0),                  // IA32_SYSENTER_CS
        (0x175, 0),                  // IA32_SYSENTER_ESP
        (0x176, 0),                  // IA32_SYSENTER_EIP
        (0xc000_0081, 0),            // STAR
        (0xc000_0082, 0),            // LSTAR
        (0xc000_0083, 0),            // CSTAR
        (0xc000_0102, 0),            // KERNEL_GS_BASE
        (0xc000_0084, 0),            // SYSCALL_MASK
        (0x10, 0),                   // IA32_TSC
        (0x1a0, 1),                  // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 0x6u64), // MTRRdefType: enabled, write-back
    ];
    let entries: Vec<kvm_msr_entry> = MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set msrs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// Programs LAPIC LINT0 as ExtINT and LINT1 as NMI, as a BIOS would.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("get lapic"))?;
    for (off, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set lapic"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn gdt_segments_decode_to_flat_segments() {
        let cs = segment_from_gdt(GDT_CODE64, 1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xb, 1, 1));
        let cs32 = segment_from_gdt(GDT_CODE32, 1);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment_from_gdt(GDT_DATA, 2);
        assert_eq!((ds.type_, ds.selector, ds.unusable), (0x3, 16, 0));
        let tr = segment_from_gdt(GDT_TSS, 3);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem, EntryMode::Long64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 0x3000) | 3);
        // Last 2 MiB page below 4 GiB.
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
