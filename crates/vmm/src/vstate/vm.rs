//! Creating the KVM VM, in the order that keeps it cheap: memory slots
//! (and KVM's private TSS slot) first, then the irqchip and PIT.

use std::sync::OnceLock;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::memory::{register_guest_memory, MemoryError};
use crate::arch::x86_64::layout::{IDENTITY_MAP_ADDR, TSS_ADDR};

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmCreateError {
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm is not accessible: add your user to the kvm group or use --engine qemu")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("cannot {op}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory registration failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmCreateError {
    move |source| VmCreateError::Kvm { op, source }
}

/// An open `/dev/kvm` and a VM with memory, irqchip and PIT.
#[derive(Debug)]
pub struct VmFds {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Kvm, VmCreateError> {
    Kvm::new().map_err(VmCreateError::KvmUnavailable)
}

/// Creates the VM on `kvm` (`/dev/kvm`, opened if `None`):
/// 1. create the VM;
/// 2. register guest memory slots;
/// 3. set the TSS and identity-map addresses (KVM's private slots);
/// 4. create the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
pub fn create_vm(dev: Option<Kvm>, mem: &GuestMemoryMmap) -> Result<VmFds, VmCreateError> {
    let kvm_fd = match dev {
        Some(k) => k,
        None => open_kvm()?,
    };
    let fd = kvm_fd.create_vm().map_err(kvm("create vm"))?;
    register_guest_memory(&fd, mem)?;
    fd.set_tss_address(TSS_ADDR as usize)
        .map_err(kvm("set tss address"))?;
    fd.set_identity_map_address(IDENTITY_MAP_ADDR)
        .map_err(kvm("set identity map address"))?;
    fd.create_irq_chip().map_err(kvm("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(kvm("create pit"))?;
    Ok(VmFds { kvm: kvm_fd, fd })
}

/// KVM's supported CPUID, the base of every booted vCPU's CPUID; read once
/// per process (it does not change while `/dev/kvm` stays loaded).
pub fn supported_cpuid(dev: &Kvm) -> Result<CpuId, VmCreateError> {
    static CPUID: OnceLock<CpuId> = OnceLock::new();
    if let Some(c) = CPUID.get() {
        return Ok(c.clone());
    }
    let c = dev
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("get supported cpuid"))?;
    Ok(CPUID.get_or_init(|| c).clone())
}
