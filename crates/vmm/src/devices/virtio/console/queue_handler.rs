//! Moves bytes between the console's queues and two bounded host buffers:
//! `input` (host → guest, delivered into receiveq buffers) and `output`
//! (guest → host, collected from transmitq buffers).

use std::collections::VecDeque;

use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};

/// receiveq index.
pub const RX: u16 = 0;
/// transmitq index.
pub const TX: u16 = 1;
/// Host → guest bytes buffered while the guest has no receive buffers.
pub const INPUT_CAPACITY: usize = 64 * 1024;
/// Guest → host bytes buffered before the transmit queue is left alone.
pub const OUTPUT_CAPACITY: usize = 256 * 1024;
/// Bytes taken from one transmit chain at most; the rest is dropped.
const MAX_TX_CHAIN: usize = 1024 * 1024;
/// Bounce chunk for guest reads.
const CHUNK: usize = 16 * 1024;

/// The console's queues and buffers.
#[derive(Debug)]
pub struct ConsoleQueueHandler<S> {
    /// receiveq (host → guest).
    pub rx: Option<Queue>,
    /// transmitq (guest → host).
    pub tx: Option<Queue>,
    /// Interrupt.
    pub signal: S,
    /// Pending host → guest bytes.
    pub input: VecDeque<u8>,
    /// Pending guest → host bytes.
    pub output: VecDeque<u8>,
    /// Bytes the guest sent that were dropped (oversized chains, bad buffers).
    pub dropped: u64,
}

impl<S: SignalUsedQueue> ConsoleQueueHandler<S> {
    /// A handler over the driver's queues (either may be absent).
    pub fn new(rx: Option<Queue>, tx: Option<Queue>, signal: S) -> Self {
        Self {
            rx,
            tx,
            signal,
            input: VecDeque::new(),
            output: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Room left in the input buffer.
    pub fn input_room(&self) -> usize {
        INPUT_CAPACITY.saturating_sub(self.input.len())
    }

    /// Copies pending input into the guest's receive buffers.
    pub fn deliver_input(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        let mut used_any = false;
        while !self.input.is_empty() {
            let Some(chain) = pop_chain(rx, mem, RX)? else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain.writable() {
                if self.input.is_empty() {
                    break;
                }
                let n = (desc.len() as usize).min(self.input.len());
                let (a, b) = self.input.as_slices();
                let bytes: Vec<u8> = a.iter().chain(b).take(n).copied().collect();
                if mem.write_slice(&bytes, desc.addr()).is_err() {
                    break;
                }
                self.input.drain(..n);
                written += n;
            }
            add_used(rx, mem, RX, head, written as u32)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(RX);
        }
        Ok(())
    }

    /// Takes the guest's transmit buffers into `output`, until it holds
    /// [`OUTPUT_CAPACITY`] bytes.
    pub fn collect_output(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        let mut used_any = false;
        let mut buf = Vec::new();
        while self.output.len() < OUTPUT_CAPACITY {
            let Some(chain) = pop_chain(tx, mem, TX)? else {
                break;
            };
            let head = chain.head_index();
            let mut taken = 0usize;
            'descs: for desc in chain.readable() {
                let len = desc.len() as usize;
                let mut done = 0usize;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    if taken + n > MAX_TX_CHAIN {
                        self.dropped += (len - done) as u64;
                        break 'descs;
                    }
                    buf.resize(n, 0);
                    let ok = desc
                        .addr()
                        .checked_add(done as u64)
                        .is_some_and(|a| mem.read_slice(&mut buf, a).is_ok());
                    if !ok {
                        self.dropped += (len - done) as u64;
                        break 'descs;
                    }
                    self.output.extend(&buf);
                    done += n;
                    taken += n;
                }
            }
            add_used(tx, mem, TX, head, 0)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(TX);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, CountingSignal};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    #[test]
    fn input_waits_for_buffers_then_fills_them() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let signal = CountingSignal::default();
        let mut h = ConsoleQueueHandler::new(Some(vq.create_queue().unwrap()), None, &signal);
        h.input.extend(b"hello world");
        h.deliver_input(&mem).unwrap();
        assert_eq!(h.input.len(), 11, "no buffers yet");
        assert_eq!(signal.0.get(), 0);
        // Two small buffers: "hello" and " worl"; "d" stays pending.
        vq.add_desc_chains(
            &[
                desc(0x8_0000, 5, VRING_DESC_F_WRITE),
                desc(0x8_1000, 5, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        h.deliver_input(&mem).unwrap();
        assert_eq!(signal.0.get(), 1);
        let mut a = [0u8; 5];
        mem.read_slice(&mut a, GuestAddress(0x8_0000)).unwrap();
        assert_eq!(&a, b"hello");
        mem.read_slice(&mut a, GuestAddress(0x8_1000)).unwrap();
        assert_eq!(&a, b" worl");
        assert_eq!(h.input.iter().copied().collect::<Vec<_>>(), b"d");
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().len(), 5);
    }

    #[test]
    fn output_is_collected_and_bad_buffers_dropped() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        mem.write_slice(b"ping", GuestAddress(0x8_0000)).unwrap();
        vq.add_desc_chains(
            &[
                desc(0x8_0000, 4, 0),
                desc(0xffff_0000, 64, 0),
                desc(0x8_0000, u32::MAX, 0),
                desc(0x8_0000, 0, 0),
            ],
            0,
        )
        .unwrap();
        let signal = CountingSignal::default();
        let mut h = ConsoleQueueHandler::new(None, Some(vq.create_queue().unwrap()), &signal);
        h.collect_output(&mem).unwrap();
        let out: Vec<u8> = h.output.iter().copied().collect();
        assert!(out.starts_with(b"ping"));
        // The 4 GiB chain is cut at MAX_TX_CHAIN or the end of memory.
        assert!(out.len() <= 4 + MAX_TX_CHAIN);
        assert!(h.dropped >= 64);
        assert_eq!(signal.0.get(), 1);
        // The big chain filled the output buffer: the last chain waits...
        assert_eq!(vq.used().idx().load(), 3);
        // ...until the host drained it.
        h.output.clear();
        h.collect_output(&mem).unwrap();
        assert_eq!(vq.used().idx().load(), 4);
    }
}
