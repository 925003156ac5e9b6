//! Guest memory: anonymous mappings around the MMIO gap, registered with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The mapping could not be created.
    #[error("cannot allocate {0} bytes of guest memory")]
    Alloc(u64, #[source] vm_memory::mmap::FromRangesError),
    /// A region's host address could not be found.
    #[error("cannot find host address of guest memory")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
    /// KVM refused a memory slot.
    #[error("cannot register guest memory slot {0} with kvm")]
    Register(u32, #[source] kvm_ioctls::Error),
}

/// Allocates `bytes` of guest RAM (lazily backed, `MAP_NORESERVE`).
pub fn create_guest_memory(bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(bytes)
        .iter()
        .map(|r| (GuestAddress(r.start), r.len as usize))
        .collect();
    GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| MemoryError::Alloc(bytes, e))
}

/// Registers every region as a KVM memory slot. Call before creating the
/// irqchip and PIT: afterwards each slot costs an SRCU grace period.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(MemoryError::HostAddress)?;
        let slot = slot as u32;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `desc` describes a live mapping owned by `mem`. The VMM
        // keeps a clone of `mem` (sharing the mapping) alive for as long as
        // the VM fd exists: `KvmVm` drops its VM fd and joins every thread
        // that uses it before its memory.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|e| MemoryError::Register(slot, e))?;
    }
    Ok(())
}
