//! Snapshot state of virtio-console ([`ConsoleState`]).
//!
//! The Unix stream is not part of the state: a restored console gets a new
//! one from the caller. Bytes the guest had sent that the old stream never
//! took are written to the new one; bytes read from the old stream that
//! the guest had not received yet are still delivered.

use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use super::device::Console;
use super::queue_handler::ConsoleQueueHandler;
use crate::devices::virtio::persist::{DeviceStateError, RestoreContext, VirtqueueState};

/// virtio-console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// The device was active.
    pub active: bool,
    /// receiveq (host → guest), if the driver set it up.
    pub rx: Option<VirtqueueState>,
    /// transmitq (guest → host), if the driver set it up.
    pub tx: Option<VirtqueueState>,
    /// Host → guest bytes not yet delivered.
    pub input: Vec<u8>,
    /// Guest → host bytes not yet written to the stream.
    pub output: Vec<u8>,
    /// Guest bytes dropped so far.
    pub dropped: u64,
}

impl Console {
    /// The device's state.
    pub fn save(&self) -> ConsoleState {
        match &self.active {
            Some((_, h)) => ConsoleState {
                active: true,
                rx: h.rx.as_ref().map(VirtqueueState::save),
                tx: h.tx.as_ref().map(VirtqueueState::save),
                input: h.input.iter().copied().collect(),
                output: h.output.iter().copied().collect(),
                dropped: h.dropped,
            },
            None => ConsoleState {
                active: false,
                rx: None,
                tx: None,
                input: Vec::new(),
                output: Vec::new(),
                dropped: 0,
            },
        }
    }

    /// A console in `state` on a new `stream`; `ctx` is required for an
    /// active one.
    pub fn restore(
        state: &ConsoleState,
        stream: Option<UnixStream>,
        ctx: Option<RestoreContext>,
    ) -> Result<Self, DeviceStateError> {
        let mut console = Console::new(stream).map_err(DeviceStateError::Stream)?;
        if let (true, Some(ctx)) = (state.active, ctx) {
            let rx = state.rx.map(|q| q.restore(0)).transpose()?;
            let tx = state.tx.map(|q| q.restore(1)).transpose()?;
            let mut h = ConsoleQueueHandler::new(rx, tx, ctx.interrupt);
            h.input.extend(&state.input);
            h.output.extend(&state.output);
            h.dropped = state.dropped;
            console.active = Some((ctx.mem, h));
        }
        Ok(console)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::IrqTrigger;
    use virtio_queue::{Queue, QueueT};

    #[test]
    fn console_state_round_trips() {
        let idle = Console::new(None).unwrap().save();
        assert_eq!(Console::restore(&idle, None, None).unwrap().save(), idle);

        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.set_next_used(3);
        let state = ConsoleState {
            active: true,
            rx: Some(VirtqueueState::save(&q)),
            tx: None,
            input: b"to guest".to_vec(),
            output: b"to host".to_vec(),
            dropped: 2,
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: ConsoleState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);
        let ctx = RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        };
        let (_host, guest) = UnixStream::pair().unwrap();
        let c = Console::restore(&back, Some(guest), Some(ctx)).unwrap();
        assert_eq!(c.save(), state);
    }
}
