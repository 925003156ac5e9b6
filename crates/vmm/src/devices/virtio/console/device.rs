//! The virtio-console device and its Unix stream backend.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::queue_handler::{ConsoleQueueHandler, RX, TX};
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{
    device_type, send_nosignal, ActivateContext, IrqTrigger, VirtioDevice, VirtioError,
};

const QUEUE_SIZES: [u16; 2] = [256, 256];

/// virtio-console, one port, connected to a Unix stream.
///
/// Bytes the guest writes to the port go to the stream; bytes read from the
/// stream go to the guest. The stream is switched to non-blocking mode.
/// When the host end closes, guest output is discarded and no more input
/// arrives.
pub struct Console {
    pub(super) stream: Option<UnixStream>,
    pub(super) eof: bool,
    pub(super) active: Option<(GuestMemoryMmap, ConsoleQueueHandler<Arc<IrqTrigger>>)>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("connected", &self.stream.is_some())
            .field("eof", &self.eof)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Console {
    /// A console on `stream` (or a console that discards output and never
    /// has input, if `None`).
    pub fn new(stream: Option<UnixStream>) -> std::io::Result<Self> {
        if let Some(s) = &stream {
            s.set_nonblocking(true)?;
        }
        Ok(Self {
            stream,
            eof: false,
            active: None,
        })
    }

    /// Writes buffered output to the stream; then takes more from the guest
    /// if the buffer drained.
    fn pump_output(&mut self) -> Result<(), VirtioError> {
        let Some((mem, h)) = self.active.as_mut() else {
            return Ok(());
        };
        loop {
            h.collect_output(mem)?;
            if h.output.is_empty() {
                return Ok(());
            }
            let Some(stream) = self.stream.as_mut() else {
                h.output.clear();
                continue;
            };
            while !h.output.is_empty() {
                let (a, _) = h.output.as_slices();
                match send_nosignal(stream, a) {
                    Ok(0) => {
                        self.stream = None;
                        break;
                    }
                    Ok(n) => {
                        h.output.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(_) => {
                        // Host end gone (EPIPE/ECONNRESET): discard from now on.
                        self.stream = None;
                        break;
                    }
                }
            }
        }
    }

    /// Reads what the stream has (bounded by the input buffer) and hands it
    /// to the guest.
    fn pump_input(&mut self) -> Result<(), VirtioError> {
        let Some((mem, h)) = self.active.as_mut() else {
            return Ok(());
        };
        if let Some(stream) = self.stream.as_mut() {
            let mut buf = [0u8; 4096];
            while !self.eof && h.input_room() > 0 {
                let want = buf.len().min(h.input_room());
                match stream.read(&mut buf[..want]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => h.input.extend(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => self.eof = true,
                }
            }
        }
        h.deliver_input(mem)
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: only meaningful with features
        // this device does not offer.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut queues = ctx.queues.into_iter().map(|q| q.ready().then_some(q));
        let rx = queues.next().flatten();
        let tx = queues.next().flatten();
        let handler = ConsoleQueueHandler::new(rx, tx, ctx.interrupt);
        self.active = Some((ctx.mem, handler));
        self.pump_input()
    }

    fn reset(&mut self) {
        // Pending input is lost with the driver's buffers; the stream stays.
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match index {
            RX => self.pump_input(),
            TX => self.pump_output(),
            _ => Ok(()),
        }
    }

    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        let (_, h) = self.active.as_ref()?;
        let stream = self.stream.as_ref()?;
        let mut events = EventSet::empty();
        if !self.eof && h.input_room() > 0 {
            events |= EventSet::IN;
        }
        if !h.output.is_empty() {
            events |= EventSet::OUT;
        }
        // Not registered at all when nothing is wanted: epoll would report
        // a hang-up over and over.
        (!events.is_empty()).then(|| (stream.as_raw_fd(), events))
    }

    fn process_backend(&mut self, events: EventSet) -> Result<(), VirtioError> {
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.pump_output()?;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.pump_input()?;
        }
        Ok(())
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}
