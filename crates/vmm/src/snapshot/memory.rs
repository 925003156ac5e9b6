//! Guest memory in a snapshot: written sparsely, mapped back copy-on-write.
//!
//! Writing: a page is read only if it can hold data — present or swapped
//! according to `/proc/self/pagemap`, or, for memory that is itself mapped
//! from an earlier snapshot, backed by data in that file (`SEEK_DATA`).
//! Pages that are all zero are skipped, leaving holes; runs of data pages
//! are written with one `pwrite` each.
//!
//! Restoring: each region is mapped `MAP_PRIVATE` from the file over the
//! guest RAM of a VM made ahead of time (the same host addresses, so its
//! KVM memory slots stay as they are), so untouched pages are shared with
//! the page cache and with every other VM restored from the same file, and
//! guest writes go to private copies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::format::PAGE_SIZE;
use super::state::MemoryRegionState;
use crate::arch::x86_64::layout::ram_ranges;
use crate::vstate::memory::map_file_fixed;

const PAGE: usize = PAGE_SIZE as usize;
/// pagemap entries read per `pread`.
const PAGEMAP_CHUNK: usize = 16 * 1024;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// What writing the memory section did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryDumpStats {
    /// Pages looked at (present, swapped or file-backed).
    pub pages_scanned: u64,
    /// Pages written (non-zero).
    pub pages_written: u64,
}

/// Errors mapping snapshot memory.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotMemoryError {
    /// The regions in the state do not describe this VMM's memory layout.
    #[error("snapshot memory regions do not match the guest memory layout")]
    Layout,
    /// mmap failed.
    #[error("cannot map snapshot memory")]
    Map(#[source] io::Error),
}

/// Guest memory mapped from a snapshot file: where each region's bytes
/// are (for snapshots of a restored VM, whose pages may be in that file
/// without ever having been touched here).
#[derive(Debug, Clone)]
pub struct MemoryBacking {
    /// The snapshot file.
    pub file: Arc<File>,
    /// Offset of its memory section.
    pub mem_offset: u64,
    /// The regions, as the snapshot lays them out.
    pub regions: Vec<MemoryRegionState>,
}

impl MemoryBacking {
    /// The file and offset holding the bytes of the region at `guest_addr`.
    fn region(&self, guest_addr: u64) -> Option<(&File, u64)> {
        self.regions
            .iter()
            .find(|r| r.guest_addr == guest_addr)
            .map(|r| (self.file.as_ref(), self.mem_offset + r.offset))
    }
}

/// Writes every region of `mem` at `mem_offset` in `file` (which must be
/// at least as long already, or be extended afterwards), leaving zero
/// pages as holes. `backing` is the snapshot `mem` was mapped from, if
/// any. The VM must be paused.
pub fn write_memory(
    file: &File,
    mem_offset: u64,
    mem: &GuestMemoryMmap,
    backing: Option<&MemoryBacking>,
) -> io::Result<(Vec<MemoryRegionState>, MemoryDumpStats)> {
    let pagemap = File::open("/proc/self/pagemap").ok();
    let mut regions = Vec::new();
    let mut stats = MemoryDumpStats::default();
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = region.as_ptr();
        // SAFETY: `host..host + len` is the live mapping of this region,
        // kept alive by `mem`. Every vCPU is parked and every device lock
        // is held by the caller, so nothing writes guest memory while the
        // slice exists.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len as usize) };
        dump_region(
            file,
            mem_offset + offset,
            bytes,
            pagemap.as_ref(),
            backing.and_then(|b| b.region(region.start_addr().0)),
            &mut stats,
        )?;
        regions.push(MemoryRegionState {
            guest_addr: region.start_addr().0,
            len,
            offset,
        });
        offset += len.next_multiple_of(PAGE_SIZE);
    }
    Ok((regions, stats))
}

fn dump_region(
    out: &File,
    at: u64,
    bytes: &[u8],
    pagemap: Option<&File>,
    backing: Option<(&File, u64)>,
    stats: &mut MemoryDumpStats,
) -> io::Result<()> {
    let pages = bytes.len() / PAGE;
    let mut maybe = vec![pagemap.is_none(); pages];
    if let Some(pm) = pagemap {
        mark_present(pm, bytes.as_ptr() as usize, &mut maybe)?;
    }
    if let Some((file, start)) = backing {
        mark_file_data(file, start, &mut maybe)?;
    }
    let mut run: Option<usize> = None;
    let flush = |from: usize, to: usize| -> io::Result<()> {
        out.write_all_at(&bytes[from * PAGE..to * PAGE], at + (from * PAGE) as u64)
    };
    for (i, &m) in maybe.iter().enumerate() {
        let data = m && {
            stats.pages_scanned += 1;
            !is_zero(&bytes[i * PAGE..(i + 1) * PAGE])
        };
        match (data, run) {
            (true, None) => run = Some(i),
            (false, Some(from)) => {
                flush(from, i)?;
                run = None;
            }
            _ => {}
        }
        stats.pages_written += u64::from(data);
    }
    if let Some(from) = run {
        flush(from, pages)?;
    }
    Ok(())
}

/// Sets `maybe[i]` for every page of the mapping at `addr` that is present
/// or swapped out.
fn mark_present(pagemap: &File, addr: usize, maybe: &mut [bool]) -> io::Result<()> {
    let first = (addr / PAGE) as u64;
    let mut buf = vec![0u8; PAGEMAP_CHUNK * 8];
    for (c, chunk) in maybe.chunks_mut(PAGEMAP_CHUNK).enumerate() {
        let want = chunk.len() * 8;
        let pos = (first + (c * PAGEMAP_CHUNK) as u64) * 8;
        pagemap.read_exact_at(&mut buf[..want], pos)?;
        for (m, e) in chunk.iter_mut().zip(buf[..want].chunks_exact(8)) {
            let mut v = [0u8; 8];
            v.copy_from_slice(e);
            if u64::from_le_bytes(v) & (PM_PRESENT | PM_SWAPPED) != 0 {
                *m = true;
            }
        }
    }
    Ok(())
}

/// Sets `maybe[i]` for every page whose bytes in `file` (starting at
/// `start`) are data rather than a hole.
fn mark_file_data(file: &File, start: u64, maybe: &mut [bool]) -> io::Result<()> {
    let end = start + (maybe.len() * PAGE) as u64;
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let from = ((data - start) / PAGE_SIZE) as usize;
        let to = ((hole - start).div_ceil(PAGE_SIZE) as usize).min(maybe.len());
        for m in &mut maybe[from..to] {
            *m = true;
        }
        pos = hole;
    }
    Ok(())
}

/// `lseek(fd, pos, whence)`; `None` when there is no more data (ENXIO).
fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let pos = i64::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on an owned, open fd has no memory-safety effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(64).all(|c| {
        c.chunks_exact(8).fold(0u64, |acc, w| {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            acc | u64::from_ne_bytes(v)
        }) == 0
    })
}

/// Checks that `regions` lay out guest RAM exactly as this VMM gives it
/// to a guest of their total size, inside a memory section of `mem_len`
/// bytes; returns that size.
pub fn check_layout(
    regions: &[MemoryRegionState],
    mem_len: u64,
) -> Result<u64, SnapshotMemoryError> {
    let total: u64 = regions.iter().map(|r| r.len).sum();
    let expected = ram_ranges(total);
    let mut next = 0u64;
    let fits = regions.len() == expected.len()
        && regions.iter().zip(&expected).all(|(r, e)| {
            let ok = r.guest_addr == e.start
                && r.len == e.len
                && r.offset == next
                && r.len % PAGE_SIZE == 0
                && r.offset.saturating_add(r.len) <= mem_len;
            next = next.saturating_add(r.len);
            ok
        });
    if !fits || total == 0 {
        return Err(SnapshotMemoryError::Layout);
    }
    Ok(total)
}

/// Maps the memory section `backing` describes copy-on-write over `ram`,
/// region by region, at `ram`'s own host addresses. `ram` must have the
/// layout [`check_layout`] accepted, and nothing may access it meanwhile.
pub fn map_snapshot(
    ram: &GuestMemoryMmap,
    backing: &MemoryBacking,
) -> Result<(), SnapshotMemoryError> {
    for r in &backing.regions {
        let region = ram
            .iter()
            .find(|g| g.start_addr().0 == r.guest_addr && g.len() == r.len)
            .ok_or(SnapshotMemoryError::Layout)?;
        map_file_fixed(region, &backing.file, backing.mem_offset + r.offset)
            .map_err(SnapshotMemoryError::Map)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn only_data_pages_are_written_and_map_back_copy_on_write() {
        use crate::vstate::memory::{create_guest_memory, reset_anonymous};
        let mem = create_guest_memory(8 << 20).unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x10_0000))
            .unwrap();
        // Touched but zero: present, skipped.
        mem.write_obj(0u64, GuestAddress(0x20_0000)).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (regions, stats) = write_memory(&f, PAGE_SIZE, &mem, None).unwrap();
        assert_eq!(stats.pages_written, 4);
        assert!(
            stats.pages_scanned >= 5 && stats.pages_scanned < 64,
            "{stats:?}"
        );
        f.set_len(PAGE_SIZE + (8 << 20)).unwrap();
        let blocks = f.metadata().unwrap().blocks();
        assert!(blocks * 512 <= 64 * 1024, "{blocks} blocks allocated");
        assert_eq!(check_layout(&regions, 8 << 20).unwrap(), 8 << 20);

        let backing = MemoryBacking {
            file: Arc::new(f),
            mem_offset: PAGE_SIZE,
            regions: regions.clone(),
        };
        let a = create_guest_memory(8 << 20).unwrap();
        let b = create_guest_memory(8 << 20).unwrap();
        // Whatever was in the RAM before is gone after the mapping.
        b.write_obj(0x99u8, GuestAddress(0x30_0000)).unwrap();
        map_snapshot(&a, &backing).unwrap();
        map_snapshot(&b, &backing).unwrap();
        assert_eq!(b.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 0);
        assert_eq!(a.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xab);
        assert_eq!(a.read_obj::<u8>(GuestAddress(0x10_2fff)).unwrap(), 7);
        a.write_obj(0x55u8, GuestAddress(0x1000)).unwrap();
        assert_eq!(b.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xab);
        let mut byte = [0u8];
        backing
            .file
            .read_exact_at(&mut byte, PAGE_SIZE + 0x1000)
            .unwrap();
        assert_eq!(byte[0], 0xab, "the file is never written through");

        // A snapshot of restored memory keeps pages only in the file.
        let g = tempfile::tempfile().unwrap();
        let (_, stats) = write_memory(&g, 0, &b, Some(&backing)).unwrap();
        assert_eq!(stats.pages_written, 4);
        let mut page = vec![0u8; PAGE];
        g.read_exact_at(&mut page, 0x10_1000).unwrap();
        assert!(page.iter().all(|&x| x == 7));

        // Back to anonymous memory: zero again, the file no longer mapped.
        reset_anonymous(&a).unwrap();
        assert_eq!(a.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
        assert_eq!(a.read_obj::<u8>(GuestAddress(0x10_2fff)).unwrap(), 0);

        let mut bad = regions.clone();
        bad[0].guest_addr = 0x1000;
        assert!(matches!(
            check_layout(&bad, 8 << 20),
            Err(SnapshotMemoryError::Layout)
        ));
        assert!(check_layout(&regions, 4 << 20).is_err());
        // RAM of another size has no region to take the mapping.
        let small = create_guest_memory(4 << 20).unwrap();
        assert!(matches!(
            map_snapshot(&small, &backing),
            Err(SnapshotMemoryError::Layout)
        ));
    }

    #[test]
    fn zero_check() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
    }
}
