//! virtio-fs: host directory shares served in-process.
//!
//! The device answers FUSE requests through an [`FsServer`] that the VMM's
//! user supplies (nook passes `nook_fs::FuseSession`, the same guarded
//! passthrough file system the qemu engine's vhost-user server uses: plain
//! names only, read-only shares enforced on the host, no device nodes, no
//! setuid). The queue handler copies each request out of guest memory and
//! the reply back in, bounded by [`MAX_MESSAGE_BYTES`], so the server never
//! sees guest memory and a hostile driver can only fail its own requests.
mod device;
mod persist;
mod queue_handler;

pub use device::{Fs, FsServer, FS_TAG_BYTES};
pub use persist::FsState;
pub use queue_handler::{FsQueueHandler, MAX_MESSAGE_BYTES};
