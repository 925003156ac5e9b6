//! The virtio-blk device.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::queue_handler::{BlockQueueHandler, Disk, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES};
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{device_type, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZES: [u16; 1] = [256];

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image cannot be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

pub(super) enum State {
    Idle(Disk),
    Active(GuestMemoryMmap, BlockQueueHandler<Arc<IrqTrigger>>),
    /// Only while moving the disk between the other two.
    Moving,
}

/// virtio-blk on a raw image file.
pub struct Block {
    pub(super) state: State,
    pub(super) features: u64,
    pub(super) sectors: u64,
    /// The image path (kept for snapshots).
    pub(super) path: PathBuf,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("sectors", &self.sectors)
            .field("features", &self.features)
            .finish()
    }
}

impl Block {
    /// Opens `path` (read-only if `read_only`) as a disk with serial `id`
    /// (truncated to 20 bytes).
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let sectors = file.metadata().map_err(err)?.len() / SECTOR_SIZE;
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut features = VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            state: State::Idle(Disk {
                file,
                sectors,
                read_only,
                id: serial,
            }),
            features,
            sectors,
            path: path.to_path_buf(),
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: capacity (le64, in sectors) at offset 0.
        let config = self.sectors.to_le_bytes();
        data.fill(0);
        if let Ok(off) = usize::try_from(offset) {
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = off.checked_add(i).and_then(|j| config.get(j)) {
                    *b = *v;
                }
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .filter(virtio_queue::QueueT::ready)
            .ok_or(VirtioError::QueueNotReady(0))?;
        match std::mem::replace(&mut self.state, State::Moving) {
            State::Idle(disk) => {
                let handler = BlockQueueHandler {
                    queue,
                    disk,
                    signal: ctx.interrupt,
                };
                self.state = State::Active(ctx.mem, handler);
                Ok(())
            }
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    fn reset(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Moving) {
            State::Active(_, handler) => State::Idle(handler.disk),
            other => other,
        };
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match (&mut self.state, index) {
            (State::Active(mem, handler), 0) => handler.process_queue(mem),
            _ => Ok(()),
        }
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reports_capacity_and_features_follow_read_only() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(10 * 512 + 100).unwrap();
        let b = Block::open(f.path(), true, "a-very-long-serial-number-indeed").unwrap();
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 10);
        let mut hi = [0u8; 4];
        b.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        b.read_config(u64::MAX, &mut hi);
        let rw = Block::open(f.path(), false, "x").unwrap();
        assert_eq!(rw.features() & VIRTIO_BLK_F_RO, 0);
        assert!(Block::open(Path::new("/nonexistent/disk"), true, "x").is_err());
    }
}
