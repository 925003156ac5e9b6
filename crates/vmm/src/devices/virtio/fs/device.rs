//! The virtio-fs device: config space (tag, one request queue) and its two
//! queues (high priority, requests).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::queue_handler::FsQueueHandler;
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{device_type, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};

/// Bytes of the tag in the config space (NUL padded).
pub const FS_TAG_BYTES: usize = 36;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Answers FUSE requests: the file system behind a virtio-fs device.
pub trait FsServer: Send + Sync + std::fmt::Debug {
    /// Answers the FUSE request in `request` (one whole message as the
    /// driver sent it). The reply replaces the contents of `reply` and is
    /// at most `reply_capacity` bytes; it is empty for requests without
    /// one (FORGET). A request that cannot be answered is an error.
    fn handle(
        &self,
        request: &mut [u8],
        reply_capacity: usize,
        reply: &mut Vec<u8>,
    ) -> std::io::Result<()>;

    /// The host directory the server works in, and whether it writes
    /// there: the `nook-vmm` thread that calls [`handle`](Self::handle) is
    /// confined to the reach of its VM's servers (Landlock). `None` for a
    /// server that opens no file (the default: a server that does must
    /// say where, or its opens fail with `EACCES` under Landlock).
    fn reach(&self) -> Option<nook_seccomp::FsReach> {
        None
    }
}

/// The queues of an activated device.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queues: Vec<FsQueueHandler<Arc<IrqTrigger>>>,
}

/// A virtio-fs device sharing one host directory under `tag`.
#[derive(Debug)]
pub struct Fs {
    pub(super) tag: String,
    pub(super) server: Arc<dyn FsServer>,
    pub(super) active: Option<Active>,
}

impl Fs {
    /// A device for `tag` (at most [`FS_TAG_BYTES`] bytes; longer tags
    /// are cut) answering through `server`.
    pub fn new(tag: &str, server: Arc<dyn FsServer>) -> Self {
        let mut end = tag.len().min(FS_TAG_BYTES);
        while !tag.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            tag: tag[..end].to_owned(),
            server,
            active: None,
        }
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `struct virtio_fs_config`: the tag, NUL padded, then
    /// `num_request_queues` (le32).
    fn config_space(&self) -> [u8; FS_TAG_BYTES + 4] {
        let mut c = [0u8; FS_TAG_BYTES + 4];
        c[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        c[FS_TAG_BYTES..].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    /// Requests served and refused by each queue, for tests and metrics.
    pub fn request_counts(&self) -> Vec<(u64, u64)> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| (q.served, q.refused)).collect())
            .unwrap_or_default()
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut queues = Vec::with_capacity(QUEUE_SIZES.len());
        for (i, queue) in ctx.queues.into_iter().enumerate() {
            if !virtio_queue::QueueT::ready(&queue) {
                return Err(VirtioError::QueueNotReady(i as u16));
            }
            queues.push(FsQueueHandler::new(queue, ctx.interrupt.clone()));
        }
        if queues.len() != QUEUE_SIZES.len() {
            return Err(VirtioError::QueueNotReady(queues.len() as u16));
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        match active.queues.get_mut(usize::from(index)) {
            Some(q) => q.process_queue(&active.mem, self.server.as_ref(), index),
            None => Ok(()),
        }
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}
