//! virtio-blk backed by a raw file.
mod device;
mod persist;
mod queue_handler;

pub use device::{Block, BlockError};
pub use persist::{BlockArgs, BlockState};
pub use queue_handler::{BlockQueueHandler, Disk, SECTOR_SIZE};
