//! Snapshot state of virtio-net ([`NetState`]).
//!
//! The stream is not part of the state: a restored NIC gets a new one
//! (a clone gets its own back end). Frames buffered in either direction
//! are dropped, as a NIC may drop them; the guest's TCP retransmits.

use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use super::device::Net;
use super::queue_handler::NetQueueHandler;
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

/// virtio-net.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address in config space.
    pub mac: [u8; 6],
    /// The device was active.
    pub active: bool,
    /// receiveq, if the driver set it up.
    pub rx: Option<VirtqueueState>,
    /// transmitq, if the driver set it up.
    pub tx: Option<VirtqueueState>,
    /// Frames dropped so far.
    pub dropped: u64,
}

/// What a NIC needs besides its state.
#[derive(Debug)]
pub struct NetArgs {
    /// Its new back end stream (`None`: the link is down for good).
    pub stream: Option<UnixStream>,
    /// Guest memory and interrupt, for an active device.
    pub ctx: Option<RestoreContext>,
}

impl Persist for Net {
    type State = NetState;
    type ConstructorArgs = NetArgs;
    type Error = DeviceStateError;

    fn save(&self) -> NetState {
        let (active, rx, tx, dropped) = match &self.active {
            Some((_, h)) => (
                true,
                h.rx.as_ref().map(VirtqueueState::save),
                h.tx.as_ref().map(VirtqueueState::save),
                h.dropped,
            ),
            None => (false, None, None, 0),
        };
        NetState {
            mac: self.mac,
            active,
            rx,
            tx,
            dropped,
        }
    }

    /// A NIC in `state` on a new stream; `ctx` is required for an active one.
    fn restore(args: NetArgs, state: &NetState) -> Result<Self, DeviceStateError> {
        let mut net = Net::new(state.mac, args.stream).map_err(DeviceStateError::Stream)?;
        if let (true, Some(ctx)) = (state.active, args.ctx) {
            let rx = state.rx.map(|q| q.restore(0)).transpose()?;
            let tx = state.tx.map(|q| q.restore(1)).transpose()?;
            let mut h = NetQueueHandler::new(rx, tx, ctx.interrupt);
            h.dropped = state.dropped;
            net.active = Some((ctx.mem, h));
        }
        Ok(net)
    }
}

impl VirtioPersist for Net {
    const DEVICE_TYPE: u32 = device_type::NET;

    fn constructor_args(backends: &mut HostBackends, ctx: Option<RestoreContext>) -> NetArgs {
        NetArgs {
            stream: backends.net.take(),
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
    fn net_state_round_trips() {
        let idle = Net::new([2, 0, 0, 0, 0, 1], None).unwrap().save();
        let none = NetArgs {
            stream: None,
            ctx: None,
        };
        assert_eq!(Net::restore(none, &idle).unwrap().save(), idle);
        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.set_next_avail(9);
        let state = NetState {
            mac: [2, 1, 2, 3, 4, 5],
            active: true,
            rx: Some(VirtqueueState::save(&q)),
            tx: Some(VirtqueueState::save(&q)),
            dropped: 3,
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: NetState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);
        let ctx = RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        };
        let (_host, guest) = UnixStream::pair().unwrap();
        let args = NetArgs {
            stream: Some(guest),
            ctx: Some(ctx),
        };
        let n = Net::restore(args, &back).unwrap();
        assert_eq!(n.save(), state);
    }
}
