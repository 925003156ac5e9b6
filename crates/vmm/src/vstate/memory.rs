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

/// Gives the host pages behind guest range `addr..addr + len` back
/// (`madvise(MADV_DONTNEED)`): anonymous memory reads as zeros afterwards,
/// a restored clone's copy-on-write mapping as the snapshot's contents;
/// either way the host memory the guest had made private is freed. Never
/// `fallocate(PUNCH_HOLE)`: a file behind guest memory is a snapshot other
/// clones map. The range must lie within one region and be page-aligned.
pub fn discard_range(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> io::Result<()> {
    let page = PAGE_SIZE as u64;
    if len == 0 {
        return Ok(());
    }
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    if addr.0 % page != 0 || len % page != 0 {
        return Err(invalid());
    }
    let region = mem.find_region(addr).ok_or_else(invalid)?;
    let offset = addr.0 - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(invalid());
    }
    let offset = usize::try_from(offset).map_err(|_| invalid())?;
    let len = usize::try_from(len).map_err(|_| invalid())?;
    // SAFETY: `offset + len <= region.len()` was checked, so the pointer
    // stays inside the mapping `region` owns, and `region.as_ptr()` is
    // page-aligned (mmap) as is `offset`.
    let start = unsafe { region.as_ptr().add(offset) };
    // SAFETY: `start..start + len` is guest RAM of this region (checked
    // above). MADV_DONTNEED leaves the mapping in place: later accesses,
    // by the guest or the VMM, read zero pages or the file's, never fault.
    let r = unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes of guest memory resident in host RAM now (`mincore` over every
/// region): what the guest's memory costs the host.
pub fn resident_bytes(mem: &GuestMemoryMmap) -> io::Result<u64> {
    let mut pages = 0u64;
    let mut vec = Vec::new();
    for region in mem.iter() {
        let len = region.len() as usize;
        vec.clear();
        vec.resize(len.div_ceil(PAGE_SIZE), 0u8);
        // SAFETY: `region.as_ptr()..+len` is the live, page-aligned
        // mapping `region` owns, and `vec` has one byte per page of it,
        // as mincore writes.
        let r = unsafe { libc::mincore(region.as_ptr().cast(), len, vec.as_mut_ptr()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        pages += vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
    }
    Ok(pages * PAGE_SIZE as u64)
}

/// The host and guest page size nook assumes (x86_64).
pub const PAGE_SIZE: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn discarded_pages_read_zero_and_leave_host_memory() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let data = vec![0xa5u8; 8 << 20];
        mem.write_slice(&data, GuestAddress(0)).unwrap();
        let before = resident_bytes(&mem).unwrap();
        assert!(before >= 8 << 20, "{before}");
        discard_range(&mem, GuestAddress(0), 4 << 20).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert!(before - after >= 4 << 20, "{before} -> {after}");
        let mut back = [1u8; 16];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, [0; 16]);
        mem.read_slice(&mut back, GuestAddress(5 << 20)).unwrap();
        assert_eq!(back, [0xa5; 16]);
    }

    #[test]
    fn discard_refuses_unaligned_and_outside_ranges() {
        let mem = create_guest_memory(4 << 20).unwrap();
        for (addr, len) in [
            (1, 4096),
            (0, 100),
            (4 << 20, 4096),
            ((4 << 20) - 4096, 8192),
        ] {
            assert!(
                discard_range(&mem, GuestAddress(addr), len).is_err(),
                "{addr} {len}"
            );
        }
        discard_range(&mem, GuestAddress(0), 0).unwrap();
    }
}
