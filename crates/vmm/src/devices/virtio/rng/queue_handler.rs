//! Fills the driver's writable buffers with random bytes.

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};

/// Upper bound of bytes handed out per descriptor chain.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The request queue of a virtio-rng device.
#[derive(Debug)]
pub struct RngQueueHandler<S> {
    /// The request queue.
    pub queue: Queue,
    /// Interrupt to raise when buffers were used.
    pub signal: S,
}

impl<S: SignalUsedQueue> RngQueueHandler<S> {
    /// Serves every available chain.
    pub fn process_queue(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let mut used_any = false;
        let mut buf = Vec::new();
        while let Some(chain) = pop_chain(&mut self.queue, mem, 0)? {
            let head = chain.head_index();
            let mut total = 0usize;
            for desc in chain.writable() {
                let room = MAX_BYTES_PER_REQUEST - total;
                let n = (desc.len() as usize).min(room);
                if n == 0 {
                    continue;
                }
                buf.resize(n, 0);
                fill_random(&mut buf).map_err(VirtioError::Backend)?;
                if mem.write_slice(&buf, desc.addr()).is_err() {
                    // Buffer outside guest memory: stop filling this chain.
                    break;
                }
                total += n;
            }
            add_used(&mut self.queue, mem, 0, head, total as u32)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(0);
        }
        Ok(())
    }
}

/// Fills `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes
        // that lives for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, CountingSignal};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    #[test]
    fn fills_writable_buffers_and_signals() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[desc(0x8_0000, 256, VRING_DESC_F_WRITE)])
            .unwrap();
        let signal = CountingSignal::default();
        let mut h = RngQueueHandler {
            queue: vq.create_queue().unwrap(),
            signal: &signal,
        };
        h.process_queue(&mem).unwrap();
        assert_eq!(signal.0.get(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 256);
        let mut got = [0u8; 256];
        mem.read_slice(&mut got, GuestAddress(0x8_0000)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
        assert_eq!(h.queue.next_used(), 1);
    }

    #[test]
    fn huge_and_out_of_bounds_buffers_are_capped() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // 4 GiB claimed, memory is 1 MiB: capped and stopped, no panic.
        vq.build_desc_chain(&[
            desc(0x8_0000, u32::MAX, VRING_DESC_F_WRITE),
            desc(0xffff_0000, 16, VRING_DESC_F_WRITE),
        ])
        .unwrap();
        let signal = CountingSignal::default();
        let mut h = RngQueueHandler {
            queue: vq.create_queue().unwrap(),
            signal: &signal,
        };
        h.process_queue(&mem).unwrap();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len() as usize, MAX_BYTES_PER_REQUEST);
    }
}
