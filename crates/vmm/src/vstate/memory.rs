//! Guest memory: anonymous mappings around the MMIO gap, registered with KVM.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

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

/// Replaces the pages of `region` with a private (copy-on-write) mapping
/// of `file` from `offset`, at the same host address, so that a KVM memory
/// slot over the region now sees the file's contents. Nothing may access
/// the region meanwhile (no vCPU or device of a VM running on it).
pub fn map_file_fixed(region: &GuestRegionMmap, file: &File, offset: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    remap(
        region,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        file.as_raw_fd(),
        offset,
    )
}

/// Gives every region of `mem` fresh anonymous (zero) pages at the same
/// host addresses: whatever the last guest left there, or a snapshot file
/// mapped there, is released. Nothing may access `mem` meanwhile.
pub fn reset_anonymous(mem: &GuestMemoryMmap) -> io::Result<()> {
    for region in mem.iter() {
        remap(
            region,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )?;
    }
    Ok(())
}

fn remap(region: &GuestRegionMmap, flags: i32, fd: i32, offset: libc::off_t) -> io::Result<()> {
    let addr = region.as_ptr();
    let len = region.len() as usize;
    let map = |flags: i32, fd: i32, offset: libc::off_t| {
        // SAFETY: `addr..addr + len` is exactly the mapping `region` owns,
        // so MAP_FIXED replaces only memory of this guest RAM region with
        // a readable and writable mapping of the same length; `fd` is open
        // or -1 for anonymous memory. The caller makes sure no thread is
        // using the guest memory meanwhile.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                offset,
            )
        };
        r == addr.cast()
    };
    if map(flags, fd, offset) {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A failed MAP_FIXED may have unmapped the range already: put zero
    // pages back so that `region` never points at unmapped memory.
    if !map(
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    ) {
        tracing::error!("vmm: cannot map guest memory back after a failed remap: {e}");
        std::process::abort();
    }
    Err(e)
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
