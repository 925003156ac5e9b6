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
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

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

/// What a console needs besides its state.
#[derive(Debug)]
pub struct ConsoleArgs {
    /// Its new stream (`None`: output discarded, no input).
    pub stream: Option<UnixStream>,
    /// Guest memory and interrupt, for an active device.
    pub ctx: Option<RestoreContext>,
}

impl Persist for Console {
    type State = ConsoleState;
    type ConstructorArgs = ConsoleArgs;
    type Error = DeviceStateError;

    fn save(&self) -> ConsoleState {
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

    /// A console in `state` on a new stream; `ctx` is required for an
    /// active one.
    fn restore(args: ConsoleArgs, state: &ConsoleState) -> Result<Self, DeviceStateError> {
        let mut console = Console::new(args.stream).map_err(DeviceStateError::Stream)?;
        if let (true, Some(ctx)) = (state.active, args.ctx) {
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

impl VirtioPersist for Console {
    const DEVICE_TYPE: u32 = device_type::CONSOLE;

    fn constructor_args(backends: &mut HostBackends, ctx: Option<RestoreContext>) -> ConsoleArgs {
        ConsoleArgs {
            stream: backends.console.take(),
            ctx,
        }
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
        assert_eq!(
            Console::restore(
                ConsoleArgs {
                    stream: None,
                    ctx: None
                },
                &idle
            )
            .unwrap()
            .save(),
            idle
        );

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
        let c = Console::restore(
            ConsoleArgs {
                stream: Some(guest),
                ctx: Some(ctx),
            },
            &back,
        )
        .unwrap();
        assert_eq!(c.save(), state);
    }
}
