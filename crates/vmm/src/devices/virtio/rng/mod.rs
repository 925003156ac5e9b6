//! virtio-rng: entropy from the host's `getrandom`.
mod device;
mod persist;
mod queue_handler;

pub use device::Rng;
pub use persist::RngState;
pub use queue_handler::{RngQueueHandler, MAX_BYTES_PER_REQUEST};
