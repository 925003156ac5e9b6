//! Serves FUSE requests from a virtio-fs queue.
//!
//! A request is a descriptor chain: device-readable descriptors holding the
//! FUSE message, then device-writable ones for the reply. The handler
//! copies the message out (at most [`MAX_MESSAGE_BYTES`]), hands it to the
//! [`FsServer`], and copies the reply into the writable descriptors. A
//! chain that is malformed (a readable descriptor after a writable one,
//! too long, outside guest memory) or that the server refuses is returned
//! with nothing written and counted; the queue goes on.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::device::FsServer;
use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};

/// Largest FUSE message either way: 1 MiB of data plus a page of headers
/// (what the FUSE server negotiates as `max_read`/`max_write`).
pub const MAX_MESSAGE_BYTES: usize = (1 << 20) + 4096;

/// One queue of a virtio-fs device.
#[derive(Debug)]
pub struct FsQueueHandler<S> {
    /// The queue.
    pub queue: Queue,
    /// Interrupt to raise when requests completed.
    pub signal: S,
    /// Requests answered.
    pub served: u64,
    /// Chains refused (malformed, or the server could not answer).
    pub refused: u64,
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// Why a chain got no reply.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("malformed chain: {0}")]
    Malformed(&'static str),
    #[error("a buffer is outside guest memory")]
    GuestMemory,
    #[error("the file server could not answer it")]
    Server(#[source] std::io::Error),
}

impl<S: SignalUsedQueue> FsQueueHandler<S> {
    /// A handler for `queue`.
    pub fn new(queue: Queue, signal: S) -> Self {
        Self {
            queue,
            signal,
            served: 0,
            refused: 0,
            request: Vec::new(),
            reply: Vec::new(),
        }
    }

    /// Answers every available request; `index` is the queue's number.
    pub fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        server: &dyn FsServer,
        index: u16,
    ) -> Result<(), VirtioError> {
        let mut used_any = false;
        while let Some(chain) = pop_chain(&mut self.queue, mem, index)? {
            let head = chain.head_index();
            // The chain iterator stops at loops (bounded by the queue size)
            // and at descriptors it cannot read.
            let descs: Vec<Descriptor> = chain.collect();
            let written = match self.serve(mem, server, &descs) {
                Ok(n) => {
                    self.served += 1;
                    n
                }
                Err(why) => {
                    self.refused += 1;
                    // A guest can do this at will: log the first few only.
                    if self.refused <= 10 {
                        let cause = std::error::Error::source(&why).map(|e| e.to_string());
                        tracing::warn!(
                            "vmm: virtio-fs queue {index}: refused a request: {why} ({cause:?})"
                        );
                    }
                    0
                }
            };
            add_used(&mut self.queue, mem, index, head, written)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(index);
        }
        Ok(())
    }

    /// Copies the request out, has it answered and copies the reply in;
    /// returns the bytes written.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        server: &dyn FsServer,
        descs: &[Descriptor],
    ) -> Result<u32, Refused> {
        let split = descs
            .iter()
            .position(Descriptor::is_write_only)
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        if writable.iter().any(|d| !d.is_write_only()) {
            return Err(Refused::Malformed(
                "a readable descriptor after a writable one",
            ));
        }
        let request_len = total_len(readable).ok_or(Refused::Malformed("request too long"))?;
        // Room for the reply; larger buffers are used only up to the limit.
        let capacity = total_len(writable).unwrap_or(MAX_MESSAGE_BYTES);
        self.request.clear();
        self.request.resize(request_len, 0);
        let mut at = 0;
        for d in readable {
            let end = at + d.len() as usize;
            mem.read_slice(&mut self.request[at..end], d.addr())
                .map_err(|_| Refused::GuestMemory)?;
            at = end;
        }
        server
            .handle(&mut self.request, capacity, &mut self.reply)
            .map_err(Refused::Server)?;
        if self.reply.len() > capacity {
            return Err(Refused::Malformed("the reply does not fit"));
        }
        let mut done = 0;
        for d in writable {
            if done == self.reply.len() {
                break;
            }
            let n = (d.len() as usize).min(self.reply.len() - done);
            mem.write_slice(&self.reply[done..done + n], d.addr())
                .map_err(|_| Refused::GuestMemory)?;
            done += n;
        }
        // `done` is at most MAX_MESSAGE_BYTES.
        Ok(done as u32)
    }
}

/// Sum of the descriptors' lengths, `None` beyond [`MAX_MESSAGE_BYTES`].
fn total_len(descs: &[Descriptor]) -> Option<usize> {
    descs
        .iter()
        .try_fold(0usize, |sum, d| sum.checked_add(d.len() as usize))
        .filter(|&n| n <= MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDesc, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, CountingSignal};

    const LOOKUP: u32 = 1;
    const MKNOD: u32 = 8;
    const MKDIR: u32 = 9;
    const INIT: u32 = 26;
    const REQUEST: u64 = 0x1_0000;
    const REPLY: u64 = 0x8_0000;

    /// nook's share server, as the kvm engine wires it.
    #[derive(Debug)]
    struct Session(nook_fs::FuseSession);

    impl FsServer for Session {
        fn handle(&self, r: &mut [u8], cap: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.handle(r, cap, out)
        }

        fn reach(&self) -> Option<nook_seccomp::FsReach> {
            Some(self.0.reach().clone())
        }
    }

    fn server(dir: &std::path::Path, read_only: bool) -> Arc<dyn FsServer> {
        let share = nook_fs::Share {
            host_dir: dir.to_owned(),
            tag: "nook0".into(),
            read_only,
        };
        Arc::new(Session(nook_fs::FuseSession::open(&share).unwrap()))
    }

    /// A FUSE message: `struct fuse_in_header` (40 bytes) and `body`.
    fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        m.extend_from_slice(&opcode.to_le_bytes());
        m.extend_from_slice(&unique.to_le_bytes());
        m.extend_from_slice(&nodeid.to_le_bytes());
        m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        m.extend_from_slice(body);
        m
    }

    fn init_body() -> Vec<u8> {
        [7u32, 31, 1 << 20, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// A driver: writes requests into guest memory and chains into the
    /// queue, one after the other.
    struct Driver<'m> {
        mem: &'m GuestMemoryMmap,
        vq: MockSplitQueue<'m, GuestMemoryMmap>,
        next_desc: u16,
        chains: u16,
    }

    impl<'m> Driver<'m> {
        fn new(mem: &'m GuestMemoryMmap) -> Self {
            Driver {
                mem,
                vq: MockSplitQueue::new(mem, 64),
                next_desc: 0,
                chains: 0,
            }
        }

        /// Makes `descs` (address, length, device-writable) a chain.
        fn chain(&mut self, descs: &[(u64, u32, bool)]) {
            let start = self.next_desc;
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, write))| {
                    let last = i + 1 == descs.len();
                    let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                    if !last {
                        flags |= VRING_DESC_F_NEXT;
                    }
                    let next = if last { 0 } else { start + i as u16 + 1 };
                    RawDescriptor::from(SplitDesc::new(addr, len, flags as u16, next))
                })
                .collect();
            self.vq.add_desc_chains(&raw, start).unwrap();
            self.next_desc += descs.len() as u16;
            self.chains += 1;
        }

        /// Queues a well-formed request with a 4 KiB reply buffer.
        fn request(&mut self, msg: &[u8]) {
            self.mem.write_slice(msg, GuestAddress(REQUEST)).unwrap();
            self.chain(&[(REQUEST, msg.len() as u32, false), (REPLY, 4096, true)]);
        }

        /// Bytes the device wrote for the last chain.
        fn used_len(&self) -> u32 {
            let i = usize::from(self.chains - 1);
            self.vq.used().ring().ref_at(i).unwrap().load().len()
        }

        /// The reply's `error` (negative errno), and its `unique`.
        fn reply(&self) -> (i32, u64) {
            assert!(self.used_len() >= 16, "no reply header");
            let mut h = [0u8; 16];
            self.mem.read_slice(&mut h, GuestAddress(REPLY)).unwrap();
            let error = i32::from_le_bytes(h[4..8].try_into().unwrap());
            (error, u64::from_le_bytes(h[8..16].try_into().unwrap()))
        }
    }

    fn cstr(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn serves_fuse_requests_from_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"hi").unwrap();
        let mem = guest_memory();
        let mut d = Driver::new(&mem);
        let signal = CountingSignal::default();
        let mut h = FsQueueHandler::new(d.vq.create_queue().unwrap(), &signal);
        let fs = server(dir.path(), true);

        d.request(&message(INIT, 1, 0, &init_body()));
        h.process_queue(&mem, fs.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (0, 1));
        d.request(&message(LOOKUP, 2, 1, &cstr("hello")));
        h.process_queue(&mem, fs.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (0, 2));
        // 16-byte header + fuse_entry_out (128 bytes).
        assert_eq!(d.used_len(), 16 + 128);
        d.request(&message(LOOKUP, 3, 1, &cstr("missing")));
        h.process_queue(&mem, fs.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (-libc::ENOENT, 3));
        assert_eq!((h.served, h.refused), (3, 0));
        assert_eq!(signal.0.get(), 3);
    }

    #[test]
    fn the_guard_holds_through_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        let mut d = Driver::new(&mem);
        let signal = CountingSignal::default();
        let mut h = FsQueueHandler::new(d.vq.create_queue().unwrap(), &signal);
        // A read-only share: nothing may be created.
        let ro = server(dir.path(), true);
        d.request(&message(INIT, 1, 0, &init_body()));
        h.process_queue(&mem, ro.as_ref(), 1).unwrap();
        let mut mkdir = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        mkdir.extend(cstr("made"));
        d.request(&message(MKDIR, 2, 1, &mkdir));
        h.process_queue(&mem, ro.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (-libc::EROFS, 2));
        assert!(!dir.path().join("made").exists());
        // Names with a `/` or `..` never reach the host.
        for (unique, name) in [(3, ".."), (4, "a/../../etc")] {
            d.request(&message(LOOKUP, unique, 1, &cstr(name)));
            h.process_queue(&mem, ro.as_ref(), 1).unwrap();
            let (error, u) = d.reply();
            assert!(error < 0 && u == unique, "{name}: {error}");
        }
        // A writable share still refuses device nodes.
        let rw = server(dir.path(), false);
        d.request(&message(INIT, 5, 0, &init_body()));
        h.process_queue(&mem, rw.as_ref(), 1).unwrap();
        let rdev = libc::makedev(1, 3) as u32;
        let mut mknod = [libc::S_IFCHR | 0o666, rdev, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>();
        mknod.extend(cstr("null"));
        d.request(&message(MKNOD, 6, 1, &mknod));
        h.process_queue(&mem, rw.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (-libc::EPERM, 6));
        assert!(!dir.path().join("null").exists());
    }

    #[test]
    fn hostile_chains_are_refused_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest_memory();
        let mut d = Driver::new(&mem);
        let signal = CountingSignal::default();
        let mut h = FsQueueHandler::new(d.vq.create_queue().unwrap(), &signal);
        let fs = server(dir.path(), false);
        let init = message(INIT, 1, 0, &init_body());
        mem.write_slice(&init, GuestAddress(REQUEST)).unwrap();
        let n = init.len() as u32;
        let hostile: [&[(u64, u32, bool)]; 6] = [
            // A readable descriptor after a writable one.
            &[(REPLY, 4096, true), (REQUEST, n, false)],
            // The request outside guest memory.
            &[(0xffff_0000, n, false), (REPLY, 4096, true)],
            // A request claiming 4 GiB.
            &[(REQUEST, u32::MAX, false), (REPLY, 4096, true)],
            // The reply buffer outside guest memory.
            &[(REQUEST, n, false), (0xfff0_0000, 4096, true)],
            // No room for any reply.
            &[(REQUEST, n, false), (REPLY, 4, true)],
            // Garbage instead of a FUSE header.
            &[(REPLY + 8192, 7, false), (REPLY, 4096, true)],
        ];
        for descs in hostile {
            d.chain(descs);
            h.process_queue(&mem, fs.as_ref(), 1).unwrap();
            assert_eq!(d.used_len(), 0, "{descs:?}");
        }
        assert_eq!((h.served, h.refused), (0, 6));
        // A well-formed request after all that is answered.
        d.request(&init);
        h.process_queue(&mem, fs.as_ref(), 1).unwrap();
        assert_eq!(d.reply(), (0, 1));
        assert_eq!(h.served, 1);
    }
}
