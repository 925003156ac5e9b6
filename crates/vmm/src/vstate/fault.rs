//! What a vCPU reports when KVM cannot run it any further ([`VcpuFault`]):
//! KVM's own account (the internal-error suberror and its data words, or
//! the hardware entry failure reason), where the guest was (RIP) and the
//! code there, read through the guest's own page tables.

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::paging::{code_at, MAX_INSTRUCTION_BYTES};

/// Which way KVM gave up on a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// `KVM_EXIT_INTERNAL_ERROR`, suberror 1: the instruction emulator
    /// could not emulate the instruction at RIP.
    Emulation,
    /// Suberror 2: an exception while delivering another.
    SimultaneousException,
    /// Suberror 3: an event could not be delivered (e.g. through an MMIO
    /// address).
    DeliveryEvent,
    /// Suberror 4: the hardware exited for a reason KVM does not handle.
    UnexpectedExitReason,
    /// Another `KVM_EXIT_INTERNAL_ERROR` suberror.
    Internal(u32),
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// A `KVM_EXIT_SYSTEM_EVENT` this VMM does not know.
    SystemEvent(u32),
    /// An exit this VMM does not handle.
    UnhandledExit(String),
}

impl FaultKind {
    /// The kind for `KVM_EXIT_INTERNAL_ERROR` with `suberror`.
    pub fn from_suberror(suberror: u32) -> Self {
        match suberror {
            KVM_INTERNAL_ERROR_EMULATION => Self::Emulation,
            KVM_INTERNAL_ERROR_SIMUL_EX => Self::SimultaneousException,
            KVM_INTERNAL_ERROR_DELIVERY_EV => Self::DeliveryEvent,
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => Self::UnexpectedExitReason,
            other => Self::Internal(other),
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Emulation => f.write_str("kvm internal error: emulation failure (suberror 1)"),
            Self::SimultaneousException => {
                f.write_str("kvm internal error: simultaneous exceptions (suberror 2)")
            }
            Self::DeliveryEvent => {
                f.write_str("kvm internal error: event delivery failure (suberror 3)")
            }
            Self::UnexpectedExitReason => {
                f.write_str("kvm internal error: unexpected exit reason (suberror 4)")
            }
            Self::Internal(n) => write!(f, "kvm internal error: suberror {n}"),
            Self::FailEntry { reason } => write!(f, "hardware entry failure {reason:#x}"),
            Self::SystemEvent(n) => write!(f, "unknown system event {n}"),
            Self::UnhandledExit(what) => write!(f, "unhandled exit {what}"),
        }
    }
}

/// KVM's report of a vCPU it could not run further, with the guest's
/// position and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuFault {
    /// What KVM said.
    pub kind: FaultKind,
    /// The data words of an internal error (`kvm_run.internal.data`; for
    /// an emulation failure, KVM's flags and its copy of the instruction).
    pub data: Vec<u64>,
    /// The guest's RIP, if the registers could be read.
    pub rip: Option<u64>,
    /// Up to 15 bytes of guest code at RIP, read through the guest's page
    /// tables (KVM's own copy of the instruction if that read failed);
    /// empty when neither is available.
    pub code: Vec<u8>,
}

impl VcpuFault {
    /// A fault with no guest context (registers not read).
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            data: Vec::new(),
            rip: None,
            code: Vec::new(),
        }
    }

    /// The fault KVM describes in `run` after `KVM_EXIT_INTERNAL_ERROR`.
    pub fn internal(run: &kvm_run) -> Self {
        // SAFETY: KVM filled the `internal` member of the exit union for
        // KVM_EXIT_INTERNAL_ERROR, the exit the caller just got; the
        // member is plain integers, valid for any bit pattern.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Self {
            kind: FaultKind::from_suberror(internal.suberror),
            data: internal.data[..n].to_vec(),
            rip: None,
            code: Vec::new(),
        }
    }

    /// KVM's own copy of the instruction, when it gave one: for an
    /// emulation failure whose first data word has the instruction-bytes
    /// flag, the next words hold its length (one byte) and its bytes.
    pub fn kvm_instruction_bytes(&self) -> Option<Vec<u8>> {
        if self.kind != FaultKind::Emulation
            || self.data.first()? & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                == 0
        {
            return None;
        }
        let bytes: Vec<u8> = self
            .data
            .get(1..3)?
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let len = usize::from(bytes[0]).min(MAX_INSTRUCTION_BYTES);
        Some(bytes[1..=len].to_vec())
    }

    /// Fills in RIP and the code there from the vCPU's registers and guest
    /// memory (best effort: a register read that fails leaves them empty).
    pub fn read_guest(&mut self, vcpu: &VcpuFd, mem: &GuestMemoryMmap) {
        let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
            return;
        };
        self.rip = Some(regs.rip);
        self.code = code_at(mem, &sregs, regs.rip);
        if self.code.is_empty() {
            self.code = self.kvm_instruction_bytes().unwrap_or_default();
        }
    }
}

impl std::fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(rip) = self.rip {
            write!(f, " at rip {rip:#x}")?;
        }
        if !self.code.is_empty() {
            f.write_str(", code")?;
            for b in &self.code {
                write!(f, " {b:02x}")?;
            }
        }
        if !self.data.is_empty() {
            f.write_str(", data")?;
            for w in &self.data {
                write!(f, " {w:#x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_reads_kvm_data_and_displays_everything() {
        let mut run = kvm_run::default();
        // What this project's reference host reported for Debian's kernel
        // (`lock cmpxchg16b [rbp+0x20]` in SLUB).
        // SAFETY: writing plain integers into the union member KVM fills.
        unsafe {
            let i = &mut run.__bindgen_anon_1.internal;
            i.suberror = 1;
            i.ndata = 4;
            i.data[..4].copy_from_slice(&[1, 0x7420_4dc7_0f48_f00f, 0x894d_0824_448b_4c66, 0x1000]);
        }
        let mut fault = VcpuFault::internal(&run);
        assert_eq!(fault.kind, FaultKind::Emulation);
        assert_eq!(fault.data.len(), 4);
        let insn = fault.kvm_instruction_bytes().unwrap();
        assert_eq!(insn.len(), 15);
        assert_eq!(&insn[..7], &[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20, 0x74]);
        fault.rip = Some(0xffff_ffff_8131_7850);
        fault.code = insn[..6].to_vec();
        let text = fault.to_string();
        assert!(text.contains("emulation failure (suberror 1)"), "{text}");
        assert!(text.contains("at rip 0xffffffff81317850"), "{text}");
        assert!(text.contains("code f0 48 0f c7 4d 20,"), "{text}");
        assert!(text.contains("data 0x1 0x74204dc70f48f00f"), "{text}");

        // ndata beyond the array is clamped; no flag, no bytes.
        // SAFETY: as above.
        unsafe {
            let i = &mut run.__bindgen_anon_1.internal;
            i.suberror = 3;
            i.ndata = 99;
            i.data[0] = 0;
        }
        let f = VcpuFault::internal(&run);
        assert_eq!(f.kind, FaultKind::DeliveryEvent);
        assert_eq!(f.data.len(), 16);
        assert_eq!(f.kvm_instruction_bytes(), None);
        assert_eq!(
            VcpuFault::new(FaultKind::FailEntry { reason: 0x21 }).to_string(),
            "hardware entry failure 0x21"
        );
    }
}
