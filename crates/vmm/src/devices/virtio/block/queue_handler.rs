//! Executes virtio-blk requests against a raw file.
//!
//! A request is a descriptor chain: a 16-byte device-readable header
//! (`type: u32, reserved: u32, sector: u64`), data descriptors, and a
//! device-writable status byte last. Malformed requests get
//! `VIRTIO_BLK_S_IOERR` (or no status if there is nowhere to put one) and
//! never stop the queue; data is copied through a bounded bounce buffer.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Length of the id returned by GET_ID.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Bounce buffer size.
const CHUNK: usize = 64 * 1024;

/// A disk image.
#[derive(Debug)]
pub struct Disk {
    /// The backing file (opened read-only if `read_only`).
    pub file: File,
    /// Capacity in sectors.
    pub sectors: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Serial returned by GET_ID (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
}

/// The request queue of a virtio-blk device.
#[derive(Debug)]
pub struct BlockQueueHandler<S> {
    /// The request queue.
    pub queue: Queue,
    /// The disk.
    pub disk: Disk,
    /// Interrupt to raise when requests completed.
    pub signal: S,
}

/// Why a request failed (reported to the driver as a status byte).
#[derive(Debug, PartialEq, Eq)]
enum RequestError {
    Malformed,
    OutOfRange,
    ReadOnly,
    Unsupported,
    GuestMemory,
    Io,
}

impl<S: SignalUsedQueue> BlockQueueHandler<S> {
    /// Executes every available request.
    pub fn process_queue(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let mut used_any = false;
        let mut bounce = Vec::new();
        while let Some(chain) = pop_chain(&mut self.queue, mem, 0)? {
            let head = chain.head_index();
            // The chain iterator stops at loops (bounded by the queue size)
            // and at descriptors it cannot read.
            let descs: Vec<Descriptor> = chain.collect();
            let written = match descs.split_last() {
                Some((status, rest)) if status.is_write_only() && status.len() >= 1 => {
                    let (code, n) = match self.execute(mem, rest, &mut bounce) {
                        Ok(n) => (VIRTIO_BLK_S_OK, n),
                        Err(RequestError::Unsupported) => (VIRTIO_BLK_S_UNSUPP, 0),
                        Err(e) => {
                            tracing::debug!("vmm: virtio-blk request failed: {e:?}");
                            (VIRTIO_BLK_S_IOERR, 0)
                        }
                    };
                    match mem.write_obj(code, status.addr()) {
                        Ok(()) => n.saturating_add(1),
                        Err(_) => n,
                    }
                }
                // Nowhere to report a status: return the chain untouched.
                _ => 0,
            };
            add_used(&mut self.queue, mem, 0, head, written)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(0);
        }
        Ok(())
    }

    /// Runs one request; returns bytes written to guest data buffers.
    fn execute(
        &self,
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
        bounce: &mut Vec<u8>,
    ) -> Result<u32, RequestError> {
        let (header, data) = descs.split_first().ok_or(RequestError::Malformed)?;
        if header.is_write_only() || header.len() < 16 {
            return Err(RequestError::Malformed);
        }
        let rtype: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| RequestError::GuestMemory)?;
        let sector: u64 = mem
            .read_obj(
                header
                    .addr()
                    .checked_add(8)
                    .ok_or(RequestError::GuestMemory)?,
            )
            .map_err(|_| RequestError::GuestMemory)?;
        match rtype {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = rtype == VIRTIO_BLK_T_OUT;
                if write && self.disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
                let capacity = self.disk.sectors * SECTOR_SIZE;
                let mut offset = sector
                    .checked_mul(SECTOR_SIZE)
                    .filter(|o| o.checked_add(total).is_some_and(|end| end <= capacity))
                    .ok_or(RequestError::OutOfRange)?;
                if data.iter().any(|d| d.is_write_only() == write) {
                    return Err(RequestError::Malformed);
                }
                let mut written = 0u32;
                for d in data {
                    self.transfer(mem, d, offset, write, bounce)?;
                    offset += u64::from(d.len());
                    if !write {
                        written = written.saturating_add(d.len());
                    }
                }
                Ok(written)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.disk.read_only {
                    self.disk.file.sync_data().map_err(|_| RequestError::Io)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let d = data.first().ok_or(RequestError::Malformed)?;
                if !d.is_write_only() {
                    return Err(RequestError::Malformed);
                }
                let n = (d.len() as usize).min(VIRTIO_BLK_ID_BYTES);
                mem.write_slice(&self.disk.id[..n], d.addr())
                    .map_err(|_| RequestError::GuestMemory)?;
                Ok(n as u32)
            }
            _ => Err(RequestError::Unsupported),
        }
    }

    /// Copies one data descriptor between guest memory and the file.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        d: &Descriptor,
        file_offset: u64,
        write: bool,
        bounce: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let len = u64::from(d.len());
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            bounce.resize(n, 0);
            let addr: GuestAddress = d
                .addr()
                .checked_add(done)
                .ok_or(RequestError::GuestMemory)?;
            if write {
                mem.read_slice(bounce, addr)
                    .map_err(|_| RequestError::GuestMemory)?;
                self.disk
                    .file
                    .write_all_at(bounce, file_offset + done)
                    .map_err(|_| RequestError::Io)?;
            } else {
                self.disk
                    .file
                    .read_exact_at(bounce, file_offset + done)
                    .map_err(|_| RequestError::Io)?;
                mem.write_slice(bounce, addr)
                    .map_err(|_| RequestError::GuestMemory)?;
            }
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, CountingSignal};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    const HDR: u64 = 0x8_0000;
    const DATA: u64 = 0x9_0000;
    const STATUS: u64 = 0xa_0000;
    const W: u32 = VRING_DESC_F_WRITE;

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8192u32).map(|i| (i / 512) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(f.path())
            .unwrap();
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        id[..4].copy_from_slice(b"disk");
        (
            f,
            Disk {
                file,
                sectors: 16,
                read_only,
                id,
            },
        )
    }

    fn header(mem: &GuestMemoryMmap, rtype: u32, sector: u64) {
        mem.write_obj(rtype, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    /// Runs the chain; returns (status byte, used length).
    fn run(mem: &GuestMemoryMmap, d: Disk, chain: &[RawDescriptor]) -> (u8, u32, Disk) {
        // A fresh driver each time: clear the rings left by the last run.
        mem.write_slice(&[0u8; 0x2000], GuestAddress(0)).unwrap();
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(chain).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let signal = CountingSignal::default();
        let mut h = BlockQueueHandler {
            queue: vq.create_queue().unwrap(),
            disk: d,
            signal: &signal,
        };
        h.process_queue(mem).unwrap();
        assert_eq!(signal.0.get(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, used.len(), h.disk)
    }

    #[test]
    fn reads_and_writes_sectors() {
        let mem = guest_memory();
        let (f, d) = disk(false);
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let (status, len, d) = run(
            &mem,
            d,
            &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1025));
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|&b| b == 2) && got[512..].iter().all(|&b| b == 3));

        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 15);
        let (status, _, d) = run(
            &mem,
            d,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let (status, _, _) = run(&mem, d, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let content = std::fs::read(f.path()).unwrap();
        assert!(content[15 * 512..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mem = guest_memory();
        let (f, d) = disk(true);
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let (status, _, _) = run(
            &mem,
            d,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn get_id_and_unsupported() {
        let mem = guest_memory();
        let (_f, d) = disk(true);
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let (status, len, d) = run(
            &mem,
            d,
            &[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
        );
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 4];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk");
        header(&mem, 99, 0);
        let (status, _, _) = run(&mem, d, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn malformed_requests_get_errors_not_panics() {
        let mem = guest_memory();
        let (_f, mut d) = disk(false);
        let bad: Vec<Vec<RawDescriptor>> = vec![
            // Beyond the end of the disk.
            vec![desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
            // Huge length.
            vec![
                desc(HDR, 16, 0),
                desc(DATA, u32::MAX - 32, W),
                desc(STATUS, 1, W),
            ],
            // Data outside guest memory.
            vec![
                desc(HDR, 16, 0),
                desc(0xffff_f000, 512, W),
                desc(STATUS, 1, W),
            ],
            // Zero-length header.
            vec![desc(HDR, 0, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
            // Header outside guest memory.
            vec![desc(u64::MAX - 8, 16, 0), desc(STATUS, 1, W)],
            // Data buffer of the wrong direction for a read.
            vec![desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        ];
        for (i, chain) in bad.iter().enumerate() {
            header(&mem, VIRTIO_BLK_T_IN, if i == 0 { 15 } else { 0 });
            let (status, _, back) = run(&mem, d, chain);
            d = back;
            assert_eq!(status, VIRTIO_BLK_S_IOERR, "case {i}");
        }
        // A chain longer than 4 GiB in total is cut short by the chain
        // iterator; whatever is left must not panic.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (_, _, d) = run(
            &mem,
            d,
            &[
                desc(HDR, 16, 0),
                desc(DATA, u32::MAX, W),
                desc(STATUS, 1, W),
            ],
        );
        // A status descriptor that is not writable: no status, still used.
        let (status, len, _) = run(&mem, d, &[desc(HDR, 16, 0), desc(STATUS, 1, 0)]);
        assert_eq!((status, len), (0xee, 0));
    }

    #[test]
    fn descriptor_loop_terminates() {
        let mem = guest_memory();
        let (_f, d) = disk(false);
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ... never ends on its own.
        let looped = [
            RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(Descriptor::new(
                STATUS,
                1,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&looped, 0).unwrap();
        let signal = CountingSignal::default();
        let mut h = BlockQueueHandler {
            queue: vq.create_queue().unwrap(),
            disk: d,
            signal: &signal,
        };
        header(&mem, VIRTIO_BLK_T_IN, 0);
        h.process_queue(&mem).unwrap();
        assert_eq!(h.queue.next_used(), 1);
    }

    #[test]
    fn bogus_avail_index_is_a_queue_error() {
        let mem = guest_memory();
        let (_f, d) = disk(false);
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().idx().store(1000);
        let signal = CountingSignal::default();
        let mut h = BlockQueueHandler {
            queue: vq.create_queue().unwrap(),
            disk: d,
            signal: &signal,
        };
        assert!(matches!(
            h.process_queue(&mem),
            Err(VirtioError::Queue { .. })
        ));
    }
}
