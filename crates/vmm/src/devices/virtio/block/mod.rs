//! virtio-blk backed by a raw file.
mod device;
mod queue_handler;

pub use device::{Block, BlockError};
pub use queue_handler::{BlockQueueHandler, Disk, SECTOR_SIZE};
