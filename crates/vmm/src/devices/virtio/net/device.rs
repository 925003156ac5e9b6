//! The virtio-net device and its Unix stream backend.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::queue_handler::{decode_frames, NetQueueHandler, RX, TX};
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{
    device_type, send_nosignal, ActivateContext, IrqTrigger, VirtioDevice, VirtioError,
};

const QUEUE_SIZES: [u16; 2] = [256, 256];
/// `VIRTIO_NET_F_MAC`: the config space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;

/// virtio-net with one queue pair, no offloads, on a Unix stream of
/// length-prefixed frames (see [`super::encode_frame`]).
///
/// Frames from the stream wait (bounded) for the guest's receive buffers;
/// while the buffer is full the stream is not read, so a guest that stops
/// receiving slows the back end instead of growing memory. When the
/// stream ends, the guest's frames are discarded.
pub struct Net {
    pub(super) mac: [u8; 6],
    pub(super) stream: Option<UnixStream>,
    /// Stream bytes not yet forming a whole frame.
    pub(super) partial: Vec<u8>,
    pub(super) active: Option<(GuestMemoryMmap, NetQueueHandler<Arc<IrqTrigger>>)>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("connected", &self.stream.is_some())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Net {
    /// A NIC with `mac` on `stream` (switched to non-blocking mode).
    pub fn new(mac: [u8; 6], stream: Option<UnixStream>) -> std::io::Result<Self> {
        if let Some(s) = &stream {
            s.set_nonblocking(true)?;
        }
        Ok(Self {
            mac,
            stream,
            partial: Vec::new(),
            active: None,
        })
    }

    /// Writes framed guest bytes to the stream; takes more from the guest
    /// when the buffer drained.
    fn pump_tx(&mut self) -> Result<(), VirtioError> {
        let Some((mem, h)) = self.active.as_mut() else {
            return Ok(());
        };
        loop {
            h.collect_tx(mem)?;
            if h.tx_bytes.is_empty() {
                return Ok(());
            }
            let Some(stream) = self.stream.as_ref() else {
                h.tx_bytes.clear();
                continue;
            };
            let mut done = 0;
            while done < h.tx_bytes.len() {
                match send_nosignal(stream, &h.tx_bytes[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        h.tx_bytes.drain(..done);
                        return Ok(());
                    }
                    Err(_) => {
                        self.stream = None;
                        break;
                    }
                }
            }
            h.tx_bytes.clear();
        }
    }

    /// Reads frames from the stream while there is room, and hands them
    /// to the guest.
    fn pump_rx(&mut self) -> Result<(), VirtioError> {
        let Some((mem, h)) = self.active.as_mut() else {
            return Ok(());
        };
        h.deliver_rx(mem)?;
        let mut buf = vec![0u8; 64 << 10];
        while let Some(stream) = self.stream.as_mut() {
            if !h.rx_room() {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => self.stream = None,
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    match decode_frames(&self.partial, &mut h.rx_frames) {
                        Some(used) => {
                            self.partial.drain(..used);
                        }
                        None => {
                            tracing::warn!("vmm: the network back end sent an oversized frame: disconnecting it");
                            self.stream = None;
                        }
                    }
                    h.deliver_rx(mem)?;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.stream = None,
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; ... }: only the MAC is offered.
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.mac.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut queues = ctx.queues.into_iter().map(|q| {
            let ready = virtio_queue::QueueT::ready(&q);
            ready.then_some(q)
        });
        let rx = queues.next().flatten();
        let tx = queues.next().flatten();
        self.active = Some((ctx.mem, NetQueueHandler::new(rx, tx, ctx.interrupt)));
        self.pump_rx()
    }

    fn reset(&mut self) {
        // Buffered frames are lost with the driver's buffers; the stream stays.
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match index {
            RX => self.pump_rx(),
            TX => self.pump_tx(),
            _ => Ok(()),
        }
    }

    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        let (_, h) = self.active.as_ref()?;
        let stream = self.stream.as_ref()?;
        let mut events = EventSet::empty();
        if h.rx_room() {
            events |= EventSet::IN;
        }
        if !h.tx_bytes.is_empty() {
            events |= EventSet::OUT;
        }
        (!events.is_empty()).then(|| (stream.as_raw_fd(), events))
    }

    fn process_backend(&mut self, events: EventSet) -> Result<(), VirtioError> {
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.pump_tx()?;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.pump_rx()?;
        }
        Ok(())
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}
