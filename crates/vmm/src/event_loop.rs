//! The `nook-vmm` thread: waits on queue-notify ioeventfds and device
//! backends (epoll) and runs the devices' queue processing.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::devices::virtio::mmio::MmioTransport;

const TOKEN_STOP: u64 = 0;
const TOKEN_ACTIVATED: u64 = 1;
const TOKEN_QUEUE_BASE: u64 = 2;
const TOKEN_BACKEND_BASE: u64 = 1 << 32;

/// The device event loop.
pub(crate) struct EventLoop {
    epoll: Epoll,
    stop: EventFd,
    activated: EventFd,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// (transport index, queue index, notify eventfd).
    queue_evts: Vec<(usize, u16, EventFd)>,
    registered: Vec<Option<(RawFd, EventSet)>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("devices", &self.transports.len())
            .finish()
    }
}

impl EventLoop {
    /// A loop over `transports`; `stop` ends it, `activated` makes it look
    /// at device backends again.
    pub(crate) fn new(
        stop: EventFd,
        activated: EventFd,
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        queue_evts: Vec<(usize, u16, EventFd)>,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), TOKEN_STOP)?;
        add(activated.as_raw_fd(), TOKEN_ACTIVATED)?;
        for (i, (_, _, evt)) in queue_evts.iter().enumerate() {
            add(evt.as_raw_fd(), TOKEN_QUEUE_BASE + i as u64)?;
        }
        let registered = vec![None; transports.len()];
        Ok(Self {
            epoll,
            stop,
            activated,
            transports,
            queue_evts,
            registered,
        })
    }

    /// Runs until the stop eventfd is written.
    pub(crate) fn run(mut self) -> std::io::Result<()> {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_ACTIVATED => {
                        let _ = self.activated.read();
                        for dev in 0..self.transports.len() {
                            self.refresh_backend(dev)?;
                        }
                    }
                    t if t >= TOKEN_BACKEND_BASE => {
                        let dev = (t - TOKEN_BACKEND_BASE) as usize;
                        if let Some(tr) = self.transports.get(dev) {
                            lock(tr).process_backend(ev.event_set());
                            self.refresh_backend(dev)?;
                        }
                    }
                    t => {
                        let Some((dev, queue, evt)) =
                            self.queue_evts.get((t - TOKEN_QUEUE_BASE) as usize)
                        else {
                            continue;
                        };
                        let _ = evt.read();
                        let dev = *dev;
                        lock(&self.transports[dev]).process_queue(*queue);
                        self.refresh_backend(dev)?;
                    }
                }
            }
            // Stop promptly even while devices are busy.
            if self.stop.read().is_ok() {
                return Ok(());
            }
        }
    }

    /// Brings the epoll registration of device `dev`'s backend in line with
    /// what the device wants now.
    fn refresh_backend(&mut self, dev: usize) -> std::io::Result<()> {
        let want = lock(&self.transports[dev]).backend_interest();
        let have = self.registered[dev];
        if want == have {
            return Ok(());
        }
        let token = TOKEN_BACKEND_BASE + dev as u64;
        if let Some((fd, _)) = have {
            // The fd may already be closed (backend dropped); that is fine.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.registered[dev] = None;
        if let Some((fd, events)) = want {
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
            self.registered[dev] = want;
        }
        Ok(())
    }
}
