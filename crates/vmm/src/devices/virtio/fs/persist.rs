//! Snapshot state of virtio-fs ([`FsState`]): its tag and, when active, its
//! queues. The FUSE server is a host resource: a restore is handed one for
//! the same tag ([`HostBackends::shares`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::device::{Active, Fs, FsServer};
use super::queue_handler::FsQueueHandler;
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

/// virtio-fs: the tag and the live queues of an active device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// The tag the guest mounts the share by.
    pub tag: String,
    /// High-priority and request queue of an active device.
    pub queues: Option<Vec<VirtqueueState>>,
}

/// What a restored virtio-fs device is built from.
#[derive(Debug)]
pub struct FsArgs {
    /// The share for this device (`tag`, server), in device order.
    pub share: Option<(String, Arc<dyn FsServer>)>,
    /// Guest memory and interrupt, for an active device.
    pub ctx: Option<RestoreContext>,
}

impl Persist for Fs {
    type State = FsState;
    type ConstructorArgs = FsArgs;
    type Error = DeviceStateError;

    fn save(&self) -> FsState {
        FsState {
            tag: self.tag.clone(),
            queues: self.active.as_ref().map(|a| {
                a.queues
                    .iter()
                    .map(|q| VirtqueueState::save(&q.queue))
                    .collect()
            }),
        }
    }

    /// A device in `state`, answering through the share handed for its
    /// tag.
    fn restore(args: FsArgs, state: &FsState) -> Result<Self, DeviceStateError> {
        let (tag, server) = args
            .share
            .filter(|(tag, _)| *tag == state.tag)
            .ok_or_else(|| DeviceStateError::MissingShare(state.tag.clone()))?;
        let mut fs = Fs::new(&tag, server);
        if let (Some(queues), Some(ctx)) = (&state.queues, args.ctx) {
            let mut handlers = Vec::with_capacity(queues.len());
            for (i, q) in queues.iter().enumerate() {
                let queue = q.restore(i as u16)?;
                handlers.push(FsQueueHandler::new(queue, ctx.interrupt.clone()));
            }
            fs.active = Some(Active {
                mem: ctx.mem,
                queues: handlers,
            });
        }
        Ok(fs)
    }
}

impl VirtioPersist for Fs {
    const DEVICE_TYPE: u32 = device_type::FS;

    fn constructor_args(backends: &mut HostBackends, ctx: Option<RestoreContext>) -> FsArgs {
        FsArgs {
            share: backends.shares.pop_front(),
            ctx,
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::{Queue, QueueT};

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::{IrqTrigger, VirtioDevice};

    #[derive(Debug)]
    struct NoServer;

    impl FsServer for NoServer {
        fn handle(&self, _: &mut [u8], _: usize, _: &mut Vec<u8>) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    fn share(tag: &str) -> Option<(String, Arc<dyn FsServer>)> {
        Some((tag.to_owned(), Arc::new(NoServer)))
    }

    fn ctx() -> RestoreContext {
        RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        }
    }

    #[test]
    fn fs_state_round_trips_and_needs_its_share() {
        let idle = Fs::new("nook0", Arc::new(NoServer)).save();
        let args = |tag| FsArgs {
            share: share(tag),
            ctx: None,
        };
        assert_eq!(Fs::restore(args("nook0"), &idle).unwrap().save(), idle);

        let mut queues = Vec::new();
        for next_avail in [3, 9] {
            let mut q = Queue::new(256).unwrap();
            q.set_size(64);
            q.set_ready(true);
            q.set_next_avail(next_avail);
            queues.push(VirtqueueState::save(&q));
        }
        let state = FsState {
            tag: "nook0".into(),
            queues: Some(queues),
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: FsState = postcard::from_bytes(&bytes).unwrap();
        let fs = Fs::restore(
            FsArgs {
                share: share("nook0"),
                ctx: Some(ctx()),
            },
            &back,
        )
        .unwrap();
        assert_eq!(fs.save(), state);
        assert_eq!(fs.request_counts(), [(0, 0), (0, 0)]);

        // Another share's server, or none, is refused.
        for share in [share("other"), None] {
            let args = FsArgs { share, ctx: None };
            assert!(matches!(
                Fs::restore(args, &state),
                Err(DeviceStateError::MissingShare(t)) if t == "nook0"
            ));
        }
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let fs = Fs::new("nook1", Arc::new(NoServer));
        let mut config = [0xffu8; 40];
        fs.read_config(0, &mut config);
        assert_eq!(&config[..5], b"nook1");
        assert!(config[5..36].iter().all(|&b| b == 0));
        assert_eq!(u32::from_le_bytes(config[36..].try_into().unwrap()), 1);
        let mut tail = [0xffu8; 8];
        fs.read_config(36, &mut tail);
        assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
        fs.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);
        assert_eq!(fs.queue_max_sizes().len(), 2);
        assert_eq!(Fs::new(&"x".repeat(50), Arc::new(NoServer)).tag().len(), 36);
    }
}
