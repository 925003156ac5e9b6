//! Snapshot state of virtio-rng ([`RngState`]).

use serde::{Deserialize, Serialize};

use super::device::Rng;
use super::queue_handler::RngQueueHandler;
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

/// virtio-rng: only its request queue, if active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The live request queue of an active device.
    pub queue: Option<VirtqueueState>,
}

impl Persist for Rng {
    type State = RngState;
    /// Guest memory and interrupt, for an active device.
    type ConstructorArgs = Option<RestoreContext>;
    type Error = DeviceStateError;

    fn save(&self) -> RngState {
        RngState {
            queue: self
                .active
                .as_ref()
                .map(|(_, h)| VirtqueueState::save(&h.queue)),
        }
    }

    /// A device in `state`; `ctx` is required for an active one.
    fn restore(ctx: Option<RestoreContext>, state: &RngState) -> Result<Self, DeviceStateError> {
        let mut rng = Rng::new();
        if let (Some(q), Some(ctx)) = (state.queue, ctx) {
            let handler = RngQueueHandler {
                queue: q.restore(0)?,
                signal: ctx.interrupt,
            };
            rng.active = Some((ctx.mem, handler));
        }
        Ok(rng)
    }
}

impl VirtioPersist for Rng {
    const DEVICE_TYPE: u32 = device_type::RNG;

    fn constructor_args(
        _backends: &mut HostBackends,
        ctx: Option<RestoreContext>,
    ) -> Option<RestoreContext> {
        ctx
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
    fn rng_state_round_trips() {
        let idle = Rng::new().save();
        assert_eq!(Rng::restore(None, &idle).unwrap().save(), idle);

        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.set_next_avail(9);
        let state = RngState {
            queue: Some(VirtqueueState::save(&q)),
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: RngState = postcard::from_bytes(&bytes).unwrap();
        let ctx = RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        };
        let rng = Rng::restore(Some(ctx), &back).unwrap();
        assert_eq!(rng.save(), state);
    }
}
