//! Saving and restoring a vCPU's architectural state ([`VcpuState`]).
//!
//! What is saved: CPUID, general registers, special registers, XSAVE area
//! (which holds the x87/SSE/AVX state that `KVM_GET_FPU` would report, so
//! the FPU is not saved twice), XCRs, debug registers, LAPIC, MSRs (every
//! MSR in `KVM_GET_MSR_INDEX_LIST` that KVM lets us read), pending events,
//! the multiprocessing state and the TSC frequency.
//!
//! The order of the ioctls matters, in both directions; see
//! [`VcpuState::save`] and [`VcpuState::restore`].

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// MSRs read or written per `KVM_GET_MSRS`/`KVM_SET_MSRS` call.
const MSR_BATCH: usize = 256;

/// MSRs KVM lists but that must not be carried over: the guest-visible
/// effect is recomputed by KVM, or writing them back is refused.
const MSR_SKIP: &[u32] = &[
    // IA32_TSC_ADJUST follows from IA32_TSC, which is restored.
    0x3b, // IA32_FEATURE_CONTROL (VMX lock bits): only meaningful with nested VMX.
    0x3a,
];

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// An ioctl failed.
    #[error("cannot {op} of vcpu {index}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// vCPU index.
        index: u8,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A list did not fit KVM's limits (a corrupt or foreign snapshot).
    #[error("vcpu {index} has an invalid {what} list")]
    List {
        /// Which list.
        what: &'static str,
        /// vCPU index.
        index: u8,
    },
}

/// The state of one vCPU, as KVM reports it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (its APIC id).
    pub index: u8,
    /// CPUID entries as set on the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSRs (index, value).
    pub msrs: Vec<kvm_msr_entry>,
    /// General purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// XSAVE area (includes the x87 FPU and SSE state).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Multiprocessing state (runnable, halted, waiting for SIPI...).
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub events: kvm_vcpu_events,
    /// TSC frequency in kHz, if KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            cpuid: self.cpuid.clone(),
            msrs: self.msrs.clone(),
            regs: self.regs,
            sregs: self.sregs,
            // The legacy 4 KiB area only (what KVM_SET_XSAVE reads here).
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            mp_state: self.mp_state,
            events: self.events,
            tsc_khz: self.tsc_khz,
        }
    }
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish()
    }
}

/// The MSRs to save: KVM's index list minus [`MSR_SKIP`].
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let list = kvm.get_msr_index_list()?;
    Ok(list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| !MSR_SKIP.contains(i))
        .collect())
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running (its thread is out of
    /// `KVM_RUN`, with any pending I/O completed, and every other vCPU of
    /// the VM is paused too: `KVM_GET_VCPU_EVENTS` is only consistent
    /// then).
    ///
    /// Order: the MP state first (reading it makes KVM process pending
    /// INIT/SIPI, which changes registers and LAPIC), the LAPIC after the
    /// registers (reading it may update it), pending events last (other
    /// reads can change what is pending).
    pub fn save(fd: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<Self, VcpuStateError> {
        let k = |op| move |source| VcpuStateError::Kvm { op, index, source };
        let mp_state = fd.get_mp_state().map_err(k("get mp state"))?;
        let regs = fd.get_regs().map_err(k("get registers"))?;
        let sregs = fd.get_sregs().map_err(k("get special registers"))?;
        let xsave = fd.get_xsave().map_err(k("get xsave"))?;
        let xcrs = fd.get_xcrs().map_err(k("get xcrs"))?;
        let debugregs = fd.get_debug_regs().map_err(k("get debug registers"))?;
        let lapic = fd.get_lapic().map_err(k("get lapic"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(k("get cpuid"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(fd, index, msr_indices)?;
        let events = fd.get_vcpu_events().map_err(k("get vcpu events"))?;
        Ok(Self {
            index,
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            mp_state,
            events,
            tsc_khz,
        })
    }

    /// Writes the state into a freshly created vCPU. Returns how many MSRs
    /// KVM refused (they are skipped).
    ///
    /// Order: CPUID first (it decides which MSRs and XSAVE features are
    /// valid); MP state before the registers; special registers before the
    /// LAPIC (they carry the APIC base MSR); the LAPIC before the MSRs (the
    /// TSC deadline MSR only takes with a configured LAPIC); general
    /// registers before events (setting registers drops a pending
    /// exception, the events bring it back).
    pub fn restore(&self, fd: &VcpuFd) -> Result<usize, VcpuStateError> {
        let index = self.index;
        let k = |op| move |source| VcpuStateError::Kvm { op, index, source };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::List {
            what: "cpuid",
            index,
        })?;
        fd.set_cpuid2(&cpuid).map_err(k("set cpuid"))?;
        if let Some(khz) = self.tsc_khz {
            // Same host model: usually equal already; a failure only means
            // the guest sees the host's rate.
            if fd.get_tsc_khz().ok() != Some(khz) {
                let _ = fd.set_tsc_khz(khz);
            }
        }
        fd.set_mp_state(self.mp_state).map_err(k("set mp state"))?;
        fd.set_regs(&self.regs).map_err(k("set registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(k("set special registers"))?;
        // SAFETY: `kvm_xsave` is the fixed 4 KiB legacy layout that
        // KVM_SET_XSAVE reads; the snapshot's compatibility check made
        // sure the host's XSAVE area is no larger than that.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(k("set xsave"))?;
        fd.set_xcrs(&self.xcrs).map_err(k("set xcrs"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(k("set debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(k("set lapic"))?;
        let refused = write_msrs(fd, index, &self.msrs)?;
        fd.set_vcpu_events(&self.events)
            .map_err(k("set vcpu events"))?;
        Ok(refused)
    }
}

/// Reads `indices` in batches; an MSR KVM will not read is left out.
fn read_msrs(
    fd: &VcpuFd,
    index: u8,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let n = rest.len().min(MSR_BATCH);
        let entries: Vec<kvm_msr_entry> = rest[..n]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| VcpuStateError::List { what: "msr", index })?;
        let got = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                op: "get msrs",
                index,
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..got.min(n)]);
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = &rest[(got + 1).min(rest.len())..];
    }
    Ok(out)
}

/// Writes `entries` in batches, skipping any KVM refuses; returns how many
/// were refused.
fn write_msrs(fd: &VcpuFd, index: u8, entries: &[kvm_msr_entry]) -> Result<usize, VcpuStateError> {
    let mut refused = 0;
    let mut rest = entries;
    while !rest.is_empty() {
        let n = rest.len().min(MSR_BATCH);
        let msrs = Msrs::from_entries(&rest[..n])
            .map_err(|_| VcpuStateError::List { what: "msr", index })?;
        let set = fd.set_msrs(&msrs).map_err(|source| VcpuStateError::Kvm {
            op: "set msrs",
            index,
            source,
        })?;
        if set < n {
            refused += 1;
            tracing::debug!(
                "vmm: vcpu{index}: kvm refused msr {:#x} on restore",
                rest[set].index
            );
        }
        rest = &rest[(set + 1).min(rest.len())..];
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut s = VcpuState {
            index: 3,
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806f8,
                ..Default::default()
            }],
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 0x1234_5678_9abc,
                ..Default::default()
            }],
            regs: kvm_regs {
                rip: 0x20_0000,
                rax: 7,
                rflags: 2,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: kvm_xsave::default(),
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            mp_state: kvm_mp_state { mp_state: 3 },
            events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_000_000),
        };
        s.sregs.cr0 = 0x8000_0011;
        s.xsave.region[7] = 0xdead_beef;
        s.lapic.regs[0x20] = 5;
        s.xcrs.nr_xcrs = 1;
        s.events.exception.injected = 1;
        s
    }

    #[test]
    fn vcpu_state_round_trips() {
        let s = sample();
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: VcpuState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
        assert_eq!(back.regs.rip, 0x20_0000);
        assert_eq!(back.xsave.region[7], 0xdead_beef);
        assert_eq!(back.msrs[0].data, 0x1234_5678_9abc);
        assert_eq!(back.tsc_khz, Some(2_000_000));
        assert!(format!("{back:?}").contains("rip: 2097152"));
    }

    #[test]
    fn vcpu_state_restores_into_a_fresh_vcpu() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipping: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let a = vm.create_vcpu(0).unwrap();
        a.set_cpuid2(&cpuid).unwrap();
        let mut regs = a.get_regs().unwrap();
        regs.rax = 0x1122;
        regs.rip = 0xfff0;
        a.set_regs(&regs).unwrap();
        let list = msr_list(&kvm).unwrap();
        let saved = VcpuState::save(&a, 0, &list).unwrap();
        assert!(saved.msrs.len() > 10, "{} msrs", saved.msrs.len());
        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        let b = vm2.create_vcpu(0).unwrap();
        let refused = saved.restore(&b).unwrap();
        assert_eq!(refused, 0, "every saved msr restores");
        let again = VcpuState::save(&b, 0, &list).unwrap();
        assert_eq!(again.regs.rax, 0x1122);
        assert_eq!(again.regs.rip, 0xfff0);
        assert_eq!(again.msrs.len(), saved.msrs.len());
    }
}
