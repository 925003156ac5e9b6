//! Moves frames between virtio-net's queues and two bounded host buffers:
//! `rx_frames` (host → guest, one frame per receive chain, after a
//! `virtio_net_hdr_v1`) and `tx_bytes` (guest → host, already framed for
//! the back end stream).
//!
//! The stream framing is `nook_proto::link`'s.

use std::collections::VecDeque;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::devices::virtio::{add_used, pop_chain, SignalUsedQueue, VirtioError};

/// receiveq index.
pub const RX: u16 = 0;
/// transmitq index.
pub const TX: u16 = 1;
/// `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1): 12 bytes before
/// every frame in both directions.
pub const HDR_LEN: usize = 12;
/// Host → guest frames buffered while the guest has no receive buffers.
pub const RX_FRAMES_CAPACITY: usize = 256;
/// Guest → host bytes buffered before the transmit queue is left alone.
pub const TX_BYTES_CAPACITY: usize = 1 << 20;

pub use nook_proto::link::{decode_frames, encode_frame, MAX_FRAME};

/// The device's queues and buffers.
#[derive(Debug)]
pub struct NetQueueHandler<S> {
    /// receiveq (host → guest).
    pub rx: Option<Queue>,
    /// transmitq (guest → host).
    pub tx: Option<Queue>,
    /// Interrupt.
    pub signal: S,
    /// Frames waiting for receive buffers.
    pub rx_frames: VecDeque<Vec<u8>>,
    /// Framed bytes waiting for the stream.
    pub tx_bytes: Vec<u8>,
    /// Frames dropped: too big for the guest's buffer, or a transmit chain
    /// that was malformed (shorter than the header, longer than
    /// [`MAX_FRAME`], or outside guest memory).
    pub dropped: u64,
}

impl<S: SignalUsedQueue> NetQueueHandler<S> {
    /// A handler over the driver's queues (either may be absent).
    pub fn new(rx: Option<Queue>, tx: Option<Queue>, signal: S) -> Self {
        Self {
            rx,
            tx,
            signal,
            rx_frames: VecDeque::new(),
            tx_bytes: Vec::new(),
            dropped: 0,
        }
    }

    /// Whether more host frames may be buffered.
    pub fn rx_room(&self) -> bool {
        self.rx_frames.len() < RX_FRAMES_CAPACITY
    }

    /// Copies pending frames into the guest's receive chains, one frame
    /// per chain behind a zeroed header with `num_buffers = 1`.
    pub fn deliver_rx(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(());
        };
        let mut used_any = false;
        while let Some(frame) = self.rx_frames.front() {
            let Some(chain) = pop_chain(rx, mem, RX)? else {
                break;
            };
            let head = chain.head_index();
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1; // num_buffers (little-endian u16)
            let mut src = hdr.iter().chain(frame.iter()).copied();
            let total = HDR_LEN + frame.len();
            let mut written = 0usize;
            let mut ok = true;
            for desc in chain.writable() {
                if written == total {
                    break;
                }
                let n = (desc.len() as usize).min(total - written);
                let bytes: Vec<u8> = src.by_ref().take(n).collect();
                if mem.write_slice(&bytes, desc.addr()).is_err() {
                    ok = false;
                    break;
                }
                written += n;
            }
            self.rx_frames.pop_front();
            if !ok || written < total {
                // The chain cannot hold the frame: drop the frame, give the
                // chain back empty.
                self.dropped += 1;
                written = 0;
            }
            add_used(rx, mem, RX, head, written as u32)?;
            used_any = true;
        }
        if used_any {
            self.signal.signal_used_queue(RX);
        }
        Ok(())
    }

    /// Takes the guest's transmit chains into `tx_bytes`, until it holds
    /// [`TX_BYTES_CAPACITY`] bytes.
    pub fn collect_tx(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        let mut used_any = false;
        let mut frame = Vec::new();
        while self.tx_bytes.len() < TX_BYTES_CAPACITY {
            let Some(chain) = pop_chain(tx, mem, TX)? else {
                break;
            };
            let head = chain.head_index();
            frame.clear();
            let mut ok = true;
            for desc in chain.readable() {
                let len = desc.len() as usize;
                if frame.len() + len > HDR_LEN + MAX_FRAME {
                    ok = false;
                    break;
                }
                let start = frame.len();
                frame.resize(start + len, 0);
                if mem.read_slice(&mut frame[start..], desc.addr()).is_err() {
                    ok = false;
                    break;
                }
            }
            if ok && frame.len() >= HDR_LEN {
                encode_frame(&frame[HDR_LEN..], &mut self.tx_bytes);
            } else {
                self.dropped += 1;
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
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    #[test]
    fn frames_reach_receive_chains_behind_a_header() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let signal = CountingSignal::default();
        let mut h = NetQueueHandler::new(Some(vq.create_queue().unwrap()), None, &signal);
        h.rx_frames.push_back(b"frame one".to_vec());
        h.rx_frames.push_back(vec![7u8; 100]);
        h.deliver_rx(&mem).unwrap();
        assert_eq!(h.rx_frames.len(), 2, "no buffers yet");
        // A chain of two buffers (header split across them), and a chain
        // too small for the second frame.
        vq.add_desc_chains(
            &[
                desc(0x8_0000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x8_1000, 64, VRING_DESC_F_WRITE, 0),
                desc(0x8_2000, 20, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        h.deliver_rx(&mem).unwrap();
        assert!(h.rx_frames.is_empty());
        assert_eq!(signal.0.get(), 1);
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(0x8_0000)).unwrap();
        assert_eq!(hdr, [0; 8]);
        let mut rest = [0u8; 13];
        mem.read_slice(&mut rest, GuestAddress(0x8_1000)).unwrap();
        assert_eq!(&rest[..4], &[0, 0, 1, 0], "num_buffers = 1");
        assert_eq!(&rest[4..], b"frame one");
        let used = vq.used();
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 21);
        assert_eq!(used.ring().ref_at(1).unwrap().load().len(), 0, "dropped");
        assert_eq!(h.dropped, 1);
    }

    #[test]
    fn transmit_chains_become_frames_and_malformed_ones_are_dropped() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let mut packet = vec![0u8; HDR_LEN];
        packet.extend_from_slice(b"to the host");
        mem.write_slice(&packet, GuestAddress(0x8_0000)).unwrap();
        vq.add_desc_chains(
            &[
                desc(0x8_0000, packet.len() as u32, 0, 0),
                desc(0xffff_0000, 64, 0, 0),
                desc(0x8_0000, 4, 0, 0),
                desc(0x8_0000, u32::MAX, 0, 0),
                desc(0x8_0000, packet.len() as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
        let signal = CountingSignal::default();
        let mut h = NetQueueHandler::new(None, Some(vq.create_queue().unwrap()), &signal);
        h.collect_tx(&mem).unwrap();
        let mut frames = VecDeque::new();
        assert_eq!(
            decode_frames(&h.tx_bytes, &mut frames),
            Some(h.tx_bytes.len())
        );
        assert_eq!(frames, [b"to the host".to_vec(), b"to the host".to_vec()]);
        // Outside memory, shorter than the header, 4 GiB long: dropped,
        // and every chain went back to the driver.
        assert_eq!(h.dropped, 3);
        assert_eq!(vq.used().idx().load(), 5);
        assert_eq!(signal.0.get(), 1);
    }
}
