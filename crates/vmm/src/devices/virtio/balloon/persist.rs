//! Snapshot state of virtio-balloon ([`BalloonState`]): its configuration,
//! the target and the size the guest reached, its queues, the statistics
//! buffer it holds, and the guest's last statistics. A restored balloon
//! gets a new [`BalloonControl`], which the restore hands to the new VM.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::device::{Balloon, BalloonControl, BalloonGuestStats, KvmBalloonConfig};
use super::queue_handler::BalloonQueueHandler;
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

/// virtio-balloon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub config: KvmBalloonConfig,
    /// The balloon size asked for, in 4 KiB pages.
    pub target_pages: u32,
    /// The balloon size the guest reached, in 4 KiB pages.
    pub actual_pages: u32,
    /// The guest's last statistics.
    pub guest: BalloonGuestStats,
    /// The queues of an active device.
    pub queues: Option<BalloonQueuesState>,
}

/// The queues of an active balloon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonQueuesState {
    pub inflate: VirtqueueState,
    pub deflate: VirtqueueState,
    /// The statistics queue and its index, if negotiated.
    pub stats: Option<(u16, VirtqueueState)>,
    /// The reporting queue and its index, if negotiated.
    pub reporting: Option<(u16, VirtqueueState)>,
    /// The statistics buffer the device held.
    pub stats_head: Option<u16>,
}

/// What a balloon needs besides its state.
#[derive(Debug)]
pub struct BalloonArgs {
    /// The host's new handle on it.
    pub control: Arc<BalloonControl>,
    /// Guest memory and interrupt, for an active device.
    pub ctx: Option<RestoreContext>,
}

impl Persist for Balloon {
    type State = BalloonState;
    type ConstructorArgs = BalloonArgs;
    type Error = DeviceStateError;

    fn save(&self) -> BalloonState {
        let stats = self.control.stats();
        BalloonState {
            config: self.config,
            target_pages: stats.target_pages,
            actual_pages: stats.actual_pages,
            guest: stats.guest,
            queues: self.active.as_ref().map(|(_, h)| BalloonQueuesState {
                inflate: VirtqueueState::save(&h.inflate),
                deflate: VirtqueueState::save(&h.deflate),
                stats: h.stats.as_ref().map(|(i, q)| (*i, VirtqueueState::save(q))),
                reporting: h
                    .reporting
                    .as_ref()
                    .map(|(i, q)| (*i, VirtqueueState::save(q))),
                stats_head: h.stats_head,
            }),
        }
    }

    /// A balloon in `state`; `ctx` is required for an active one.
    fn restore(args: BalloonArgs, state: &BalloonState) -> Result<Self, DeviceStateError> {
        let control = args.control;
        control.set_target_pages(state.target_pages);
        control
            .actual_pages
            .store(state.actual_pages, Ordering::SeqCst);
        *crate::devices::lock(&control.guest) = state.guest;
        let mut balloon =
            Balloon::new(state.config, control.clone()).map_err(DeviceStateError::Stream)?;
        if let (Some(q), Some(ctx)) = (&state.queues, args.ctx) {
            let queue = |(i, s): &(u16, VirtqueueState)| s.restore(*i).map(|q| (*i, q));
            let handler = BalloonQueueHandler {
                inflate: q.inflate.restore(0)?,
                deflate: q.deflate.restore(1)?,
                stats: q.stats.as_ref().map(queue).transpose()?,
                reporting: q.reporting.as_ref().map(queue).transpose()?,
                stats_head: q.stats_head,
                signal: ctx.interrupt.clone(),
                control: control.clone(),
            };
            *crate::devices::lock(&control.interrupt) = Some(ctx.interrupt);
            balloon.active = Some((ctx.mem, handler));
        }
        Ok(balloon)
    }
}

impl VirtioPersist for Balloon {
    const DEVICE_TYPE: u32 = device_type::BALLOON;

    fn constructor_args(backends: &mut HostBackends, ctx: Option<RestoreContext>) -> BalloonArgs {
        let control = Arc::new(BalloonControl::default());
        backends.balloon = Some(control.clone());
        BalloonArgs { control, ctx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::IrqTrigger;
    use virtio_queue::{Queue, QueueT};

    fn queue(next_avail: u16) -> VirtqueueState {
        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.set_next_avail(next_avail);
        VirtqueueState::save(&q)
    }

    #[test]
    fn balloon_state_round_trips_with_its_target_and_stats_buffer() {
        let config = KvmBalloonConfig {
            free_page_reporting: true,
            stats_interval_s: 5,
        };
        let idle = Balloon::new(config, Arc::default()).unwrap().save();
        let back = Balloon::restore(
            BalloonArgs {
                control: Arc::default(),
                ctx: None,
            },
            &idle,
        )
        .unwrap();
        assert_eq!(back.save(), idle);

        let state = BalloonState {
            config,
            target_pages: 32768,
            actual_pages: 30000,
            guest: BalloonGuestStats {
                total_bytes: Some(1 << 29),
                free_bytes: Some(1 << 27),
                available_bytes: None,
                disk_caches_bytes: Some(5),
                updates: 7,
            },
            queues: Some(BalloonQueuesState {
                inflate: queue(3),
                deflate: queue(1),
                stats: Some((2, queue(9))),
                reporting: Some((3, queue(4))),
                stats_head: Some(6),
            }),
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let decoded: BalloonState = postcard::from_bytes(&bytes).unwrap();
        let mut backends = HostBackends::default();
        let ctx = RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        };
        let args = Balloon::constructor_args(&mut backends, Some(ctx));
        let restored = Balloon::restore(args, &decoded).unwrap();
        assert_eq!(restored.save(), state);
        // The restore hands the host its handle, with the saved figures.
        let control = backends.balloon.expect("a control for the new VM");
        let s = control.stats();
        assert_eq!((s.target_pages, s.actual_pages), (32768, 30000));
        assert_eq!(s.guest.updates, 7);
    }
}
