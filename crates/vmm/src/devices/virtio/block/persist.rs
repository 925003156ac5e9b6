//! Snapshot state of virtio-blk ([`BlockState`]). The image file is
//! reopened on restore, from its saved path or one the caller gives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::device::{Block, State};
use super::queue_handler::BlockQueueHandler;
use crate::devices::virtio::device_type;
use crate::devices::virtio::persist::{
    DeviceStateError, HostBackends, RestoreContext, VirtioPersist, VirtqueueState,
};
use crate::snapshot::persist::Persist;

/// virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Image path when the snapshot was taken.
    pub path: PathBuf,
    /// Read-only disk.
    pub read_only: bool,
    /// GET_ID serial (NUL-padded).
    pub id: Vec<u8>,
    /// Capacity in sectors.
    pub sectors: u64,
    /// The live request queue of an active device.
    pub queue: Option<VirtqueueState>,
}

/// What a disk needs besides its state.
#[derive(Debug)]
pub struct BlockArgs {
    /// The image to open instead of the saved path (same size).
    pub path: Option<PathBuf>,
    /// Guest memory and interrupt, for an active device.
    pub ctx: Option<RestoreContext>,
}

impl Persist for Block {
    type State = BlockState;
    type ConstructorArgs = BlockArgs;
    type Error = DeviceStateError;

    fn save(&self) -> BlockState {
        let (id, read_only, queue) = match &self.state {
            State::Idle(d) => (d.id.to_vec(), d.read_only, None),
            State::Active(_, h) => (
                h.disk.id.to_vec(),
                h.disk.read_only,
                Some(VirtqueueState::save(&h.queue)),
            ),
            State::Moving => (Vec::new(), true, None),
        };
        BlockState {
            path: self.path.clone(),
            read_only,
            id,
            sectors: self.sectors,
            queue,
        }
    }

    /// A device in `state`, its image reopened from `args.path` (the saved
    /// path if `None`); `args.ctx` is required for an active one. The image
    /// must still have the saved size.
    fn restore(args: BlockArgs, state: &BlockState) -> Result<Self, DeviceStateError> {
        let path = args.path.as_deref().unwrap_or(&state.path);
        let id = String::from_utf8_lossy(&state.id);
        let mut block = Block::open(path, state.read_only, id.trim_end_matches('\0'))?;
        if block.sectors != state.sectors {
            return Err(DeviceStateError::DiskSize {
                path: path.to_path_buf(),
                expected: state.sectors,
                found: block.sectors,
            });
        }
        if let (Some(q), Some(ctx)) = (state.queue, args.ctx) {
            let queue = q.restore(0)?;
            if let State::Idle(disk) = std::mem::replace(&mut block.state, State::Moving) {
                block.state = State::Active(
                    ctx.mem,
                    BlockQueueHandler {
                        queue,
                        disk,
                        signal: ctx.interrupt,
                    },
                );
            }
        }
        Ok(block)
    }
}

impl VirtioPersist for Block {
    const DEVICE_TYPE: u32 = device_type::BLOCK;

    fn constructor_args(backends: &mut HostBackends, ctx: Option<RestoreContext>) -> BlockArgs {
        BlockArgs {
            path: backends.disks.pop_front(),
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
    fn block_state_round_trips() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 * 512).unwrap();
        let idle = Block::open(f.path(), false, "disk-a").unwrap().save();
        assert_eq!(idle.sectors, 8);
        assert_eq!(&idle.id[..6], b"disk-a");
        let back = Block::restore(
            BlockArgs {
                path: None,
                ctx: None,
            },
            &idle,
        )
        .unwrap()
        .save();
        assert_eq!(back, idle);

        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.set_next_avail(2);
        let mut active = idle.clone();
        active.queue = Some(VirtqueueState::save(&q));
        let bytes = postcard::to_allocvec(&active).unwrap();
        let decoded: BlockState = postcard::from_bytes(&bytes).unwrap();
        let ctx = RestoreContext {
            mem: guest_memory(),
            interrupt: Arc::new(IrqTrigger::new(
                vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
        };
        let b = Block::restore(
            BlockArgs {
                path: None,
                ctx: Some(ctx),
            },
            &decoded,
        )
        .unwrap();
        assert_eq!(b.save(), active);

        // Another image of the same size can stand in; a resized one not.
        let g = tempfile::NamedTempFile::new().unwrap();
        g.as_file().set_len(16 * 512).unwrap();
        assert!(matches!(
            Block::restore(
                BlockArgs {
                    path: Some(g.path().to_path_buf()),
                    ctx: None,
                },
                &idle
            ),
            Err(DeviceStateError::DiskSize {
                expected: 8,
                found: 16,
                ..
            })
        ));
    }
}
