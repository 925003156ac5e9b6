//! The balloon's queues: page frame numbers to discard (inflate), pages
//! the guest takes back (deflate), memory statistics, and free page
//! reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{BalloonControl, BalloonGuestStats};
use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};
use crate::vstate::memory::{discard_range, PAGE_SIZE};

/// Page frame numbers read from one inflate or deflate chain at most
/// (Linux sends 256); the rest of a longer chain is ignored.
pub const MAX_PFNS_PER_CHAIN: usize = 16 * 1024;
/// Statistics entries read from one buffer at most (Linux sends 10).
const MAX_STATS: usize = 64;
/// One statistics entry: a 16-bit tag and a 64-bit value, packed.
const STAT_BYTES: usize = 10;
/// The balloon's page unit, whatever the guest's page size.
const PFN_SHIFT: u32 = 12;

/// `VIRTIO_BALLOON_S_*` tags this device keeps.
mod tag {
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
    pub const CACHES: u16 = 7;
}

/// The queues of an active balloon.
#[derive(Debug)]
pub struct BalloonQueueHandler<S> {
    /// Queue 0: page frame numbers the guest gives up.
    pub inflate: Queue,
    /// Queue 1: page frame numbers the guest takes back.
    pub deflate: Queue,
    /// The statistics queue and its index, if negotiated.
    pub stats: Option<(u16, Queue)>,
    /// The free page reporting queue and its index, if negotiated.
    pub reporting: Option<(u16, Queue)>,
    /// The statistics buffer the device holds until it wants new figures.
    pub stats_head: Option<u16>,
    /// Interrupt to raise when buffers were used.
    pub signal: S,
    /// Where the guest's answers go.
    pub control: Arc<BalloonControl>,
}

impl<S: SignalUsedQueue> BalloonQueueHandler<S> {
    /// Serves queue `index`.
    pub fn process_queue(&mut self, mem: &GuestMemoryMmap, index: u16) -> Result<(), VirtioError> {
        let used = match index {
            0 => self.inflate(mem)?,
            1 => self.deflate(mem)?,
            i if self.stats.as_ref().is_some_and(|(s, _)| *s == i) => self.take_stats(mem)?,
            i if self.reporting.as_ref().is_some_and(|(r, _)| *r == i) => self.report(mem)?,
            _ => false,
        };
        if used {
            self.signal.signal_used_queue(index);
        }
        Ok(())
    }

    /// Discards the pages of every inflate chain.
    fn inflate(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        let mut used = false;
        while let Some(chain) = pop_chain(&mut self.inflate, mem, 0)? {
            let head = chain.head_index();
            let mut pfns = read_pfns(mem, chain);
            self.control
                .inflated_pages
                .fetch_add(pfns.len() as u64, Ordering::Relaxed);
            pfns.sort_unstable();
            pfns.dedup();
            for (first, count) in runs(&pfns) {
                let addr = GuestAddress(u64::from(first) << PFN_SHIFT);
                self.discard(mem, addr, u64::from(count) << PFN_SHIFT);
            }
            add_used(&mut self.inflate, mem, 0, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Acknowledges every deflate chain: the guest may use those pages
    /// again, and they fault back in on their first touch.
    fn deflate(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        let mut used = false;
        while let Some(chain) = pop_chain(&mut self.deflate, mem, 1)? {
            let head = chain.head_index();
            let pfns = read_pfns(mem, chain);
            self.control
                .deflated_pages
                .fetch_add(pfns.len() as u64, Ordering::Relaxed);
            add_used(&mut self.deflate, mem, 1, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Reads the statistics buffer and keeps it until [`Self::request_stats`].
    fn take_stats(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        let Some((index, queue)) = &mut self.stats else {
            return Ok(false);
        };
        let mut used = false;
        while let Some(chain) = pop_chain(queue, mem, *index)? {
            let head = chain.head_index();
            let mut bytes = Vec::new();
            for desc in chain.readable() {
                let room = MAX_STATS * STAT_BYTES - bytes.len();
                let n = (desc.len() as usize).min(room);
                let start = bytes.len();
                bytes.resize(start + n, 0);
                if mem.read_slice(&mut bytes[start..], desc.addr()).is_err() {
                    bytes.truncate(start);
                    break;
                }
            }
            let mut guest = crate::devices::lock(&self.control.guest);
            apply_stats(&mut guest, &bytes);
            drop(guest);
            // A driver that sends a second buffer gets the first back.
            if let Some(old) = self.stats_head.replace(head) {
                add_used(queue, mem, *index, old, 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Hands the statistics buffer back so the guest fills it anew.
    pub fn request_stats(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let (Some((index, queue)), Some(head)) = (&mut self.stats, self.stats_head.take()) else {
            return Ok(());
        };
        add_used(queue, mem, *index, head, 0)?;
        self.signal.signal_used_queue(*index);
        Ok(())
    }

    /// Discards every reported range.
    fn report(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtioError> {
        let Some((index, mut queue)) = self.reporting.take() else {
            return Ok(false);
        };
        let result = self.report_on(mem, index, &mut queue);
        self.reporting = Some((index, queue));
        result
    }

    fn report_on(
        &mut self,
        mem: &GuestMemoryMmap,
        index: u16,
        queue: &mut Queue,
    ) -> Result<bool, VirtioError> {
        let mut used = false;
        while let Some(chain) = pop_chain(queue, mem, index)? {
            let head = chain.head_index();
            for desc in chain {
                let page = PAGE_SIZE as u64;
                let start = desc.addr().0.next_multiple_of(page);
                let end = desc.addr().0.saturating_add(u64::from(desc.len())) / page * page;
                if end > start {
                    self.discard(mem, GuestAddress(start), end - start);
                    self.control
                        .reported_bytes
                        .fetch_add(end - start, Ordering::Relaxed);
                }
            }
            add_used(queue, mem, index, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Discards one range the guest named; a bad one is counted (and
    /// logged now and then), never an error of the device.
    fn discard(&self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) {
        if let Err(e) = discard_range(mem, addr, len) {
            let failures = self
                .control
                .discard_failures
                .fetch_add(1, Ordering::Relaxed);
            if failures.is_power_of_two() || failures == 0 {
                tracing::warn!(
                    "vmm: balloon cannot discard {len} bytes at guest {:#x} ({e}); {} such ranges so far",
                    addr.0,
                    failures + 1
                );
            }
        }
    }
}

/// The page frame numbers of a chain's readable buffers (at most
/// [`MAX_PFNS_PER_CHAIN`]); a buffer outside guest memory ends the list.
fn read_pfns(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> Vec<u32> {
    let mut pfns = Vec::new();
    let mut buf = Vec::new();
    for desc in chain.readable() {
        let n = (desc.len() as usize / 4).min(MAX_PFNS_PER_CHAIN - pfns.len());
        buf.resize(n * 4, 0);
        if mem.read_slice(&mut buf, desc.addr()).is_err() {
            break;
        }
        pfns.extend(
            buf.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    pfns
}

/// Runs of consecutive numbers in sorted, deduplicated `pfns`, as (first,
/// count).
fn runs(pfns: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &pfn in pfns {
        match out.last_mut() {
            Some((first, count)) if first.checked_add(*count) == Some(pfn) => *count += 1,
            _ => out.push((pfn, 1)),
        }
    }
    out
}

/// Takes the statistics this device keeps from a buffer of packed entries.
fn apply_stats(guest: &mut BalloonGuestStats, bytes: &[u8]) {
    for entry in bytes.chunks_exact(STAT_BYTES) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&entry[2..]);
        let value = Some(u64::from_le_bytes(value));
        match tag {
            tag::MEMFREE => guest.free_bytes = value,
            tag::MEMTOT => guest.total_bytes = value,
            tag::AVAIL => guest.available_bytes = value,
            tag::CACHES => guest.disk_caches_bytes = value,
            _ => {}
        }
    }
    guest.updates += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::CountingSignal;
    use crate::vstate::memory::{create_guest_memory, resident_bytes};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    const MIB: u64 = 1 << 20;
    /// Where the test's buffers live: the queues' rings sit low, guest
    /// "RAM" for the pages starts at 16 MiB.
    const BUFFERS: u64 = 0x10_0000;
    const DATA: u64 = 16 * MIB;

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    fn handler<'s>(
        mem: &GuestMemoryMmap,
        queues: &[MockSplitQueue<'_, GuestMemoryMmap>; 4],
        signal: &'s CountingSignal,
    ) -> BalloonQueueHandler<&'s CountingSignal> {
        // The guest wrote 32 MiB of data: those pages are resident.
        let data = vec![0x5au8; 32 * MIB as usize];
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        BalloonQueueHandler {
            inflate: queues[0].create_queue().unwrap(),
            deflate: queues[1].create_queue().unwrap(),
            stats: Some((2, queues[2].create_queue().unwrap())),
            reporting: Some((3, queues[3].create_queue().unwrap())),
            stats_head: None,
            signal,
            control: Arc::new(BalloonControl::default()),
        }
    }

    /// 64 MiB of guest memory with four mock queues at the bottom.
    fn setup(mem: &GuestMemoryMmap) -> [MockSplitQueue<'_, GuestMemoryMmap>; 4] {
        std::array::from_fn(|i| MockSplitQueue::create(mem, GuestAddress(0x1_0000 * i as u64), 16))
    }

    /// PFNs of the 4 KiB pages in `start..start + len`, little-endian,
    /// written at `at`; returns their byte length.
    fn write_pfns(mem: &GuestMemoryMmap, at: u64, start: u64, len: u64) -> u32 {
        let bytes: Vec<u8> = (start >> 12..(start + len) >> 12)
            .rev()
            .flat_map(|p| (p as u32).to_le_bytes())
            .collect();
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        bytes.len() as u32
    }

    #[test]
    fn inflated_pages_leave_host_memory_and_read_zero() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let queues = setup(&mem);
        let signal = CountingSignal::default();
        let mut h = handler(&mem, &queues, &signal);
        // 8 MiB in chains of 1 MiB (256 PFNs, as Linux sends them).
        for i in 0..8u64 {
            let at = BUFFERS + i * 0x1000;
            let len = write_pfns(&mem, at, DATA + i * MIB, MIB);
            queues[0]
                .add_desc_chains(&[desc(at, len, 0)], i as u16)
                .unwrap();
        }
        let before = resident_bytes(&mem).unwrap();
        h.process_queue(&mem, 0).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert!(
            before - after >= 8 * MIB,
            "resident {} MiB -> {} MiB",
            before / MIB,
            after / MIB
        );
        let mut page = [1u8; 64];
        mem.read_slice(&mut page, GuestAddress(DATA + 3 * MIB))
            .unwrap();
        assert_eq!(page, [0; 64]);
        mem.read_slice(&mut page, GuestAddress(DATA + 9 * MIB))
            .unwrap();
        assert_eq!(page, [0x5a; 64], "pages outside the balloon are kept");
        assert_eq!(h.control.stats().inflated_pages, 8 * 256);
        assert_eq!(h.inflate.next_used(), 8);
        assert_eq!(signal.0.get(), 1);

        // Deflating gives nothing back to discard; the chain is used.
        let len = write_pfns(&mem, BUFFERS, DATA, MIB);
        queues[1]
            .add_desc_chains(&[desc(BUFFERS, len, 0)], 0)
            .unwrap();
        h.process_queue(&mem, 1).unwrap();
        assert_eq!(h.control.stats().deflated_pages, 256);
        assert_eq!(h.deflate.next_used(), 1);
    }

    #[test]
    fn reported_free_ranges_are_discarded() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let queues = setup(&mem);
        let signal = CountingSignal::default();
        let mut h = handler(&mem, &queues, &signal);
        let before = resident_bytes(&mem).unwrap();
        // Linux reports blocks of 2 MiB and more, as device-writable buffers.
        queues[3]
            .add_desc_chains(
                &[
                    desc(DATA, 4 * MIB as u32, VRING_DESC_F_WRITE),
                    desc(DATA + 8 * MIB, 2 * MIB as u32, VRING_DESC_F_WRITE),
                ],
                0,
            )
            .unwrap();
        h.process_queue(&mem, 3).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert!(before - after >= 6 * MIB, "{before} -> {after}");
        assert_eq!(h.control.stats().reported_bytes, 6 * MIB);
        let mut page = [1u8; 16];
        mem.read_slice(&mut page, GuestAddress(DATA + 8 * MIB))
            .unwrap();
        assert_eq!(page, [0; 16]);
        mem.read_slice(&mut page, GuestAddress(DATA + 6 * MIB))
            .unwrap();
        assert_eq!(page, [0x5a; 16]);
        assert_eq!(signal.0.get(), 1);
    }

    #[test]
    fn bad_ranges_are_counted_not_fatal() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let queues = setup(&mem);
        let signal = CountingSignal::default();
        let mut h = handler(&mem, &queues, &signal);
        // PFNs far past guest memory, and a buffer that claims 4 GiB.
        let far = u32::MAX.to_le_bytes().repeat(MAX_PFNS_PER_CHAIN);
        mem.write_slice(&far, GuestAddress(BUFFERS)).unwrap();
        queues[0]
            .add_desc_chains(&[desc(BUFFERS, 4, 0), desc(BUFFERS, u32::MAX, 0)], 0)
            .unwrap();
        queues[3]
            .add_desc_chains(&[desc(60 * MIB, u32::MAX, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        h.process_queue(&mem, 0).unwrap();
        h.process_queue(&mem, 3).unwrap();
        let s = h.control.stats();
        assert!(s.discard_failures >= 2, "{s:?}");
        // Two one-descriptor chains, both used.
        assert_eq!(h.inflate.next_used(), 2);
        assert_eq!(h.reporting.as_ref().unwrap().1.next_used(), 1);
    }

    #[test]
    fn statistics_are_kept_and_the_buffer_goes_back_on_request() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let queues = setup(&mem);
        let signal = CountingSignal::default();
        let mut h = handler(&mem, &queues, &signal);
        let mut buf = Vec::new();
        for (tag, value) in [(tag::MEMFREE, 300 * MIB), (tag::MEMTOT, 500 * MIB), (99, 1)] {
            buf.extend(tag.to_le_bytes());
            buf.extend(value.to_le_bytes());
        }
        mem.write_slice(&buf, GuestAddress(BUFFERS)).unwrap();
        queues[2]
            .add_desc_chains(&[desc(BUFFERS, buf.len() as u32, 0)], 0)
            .unwrap();
        h.process_queue(&mem, 2).unwrap();
        let guest = h.control.stats().guest;
        assert_eq!(guest.free_bytes, Some(300 * MIB));
        assert_eq!(guest.total_bytes, Some(500 * MIB));
        assert_eq!(guest.available_bytes, None);
        assert_eq!(guest.updates, 1);
        // Held, not used, until the device wants new figures.
        assert_eq!(h.stats_head, Some(0));
        assert_eq!(signal.0.get(), 0);
        h.request_stats(&mem).unwrap();
        assert_eq!(h.stats_head, None);
        assert_eq!(h.stats.as_ref().unwrap().1.next_used(), 1);
        assert_eq!(signal.0.get(), 1);
        // Nothing held: nothing to hand back.
        h.request_stats(&mem).unwrap();
        assert_eq!(signal.0.get(), 1);
    }

    #[test]
    fn runs_coalesce_consecutive_frames() {
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), [(1, 3), (7, 2), (10, 1)]);
        assert_eq!(runs(&[u32::MAX - 1, u32::MAX]), [(u32::MAX - 1, 2)]);
        assert!(runs(&[]).is_empty());
    }
}
