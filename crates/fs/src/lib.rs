//! nook's virtio-fs server: host directories shared into guests.
//!
//! A [`Share`] names a host directory, the tag the guest mounts it by and
//! whether it is read-only. [`ShareServer`] serves one share as a
//! vhost-user-fs backend on a Unix socket that QEMU's
//! `vhost-user-fs-device` connects to; the FUSE requests are answered by
//! `fuse-backend-rs`'s passthrough file system behind [`GuardedFs`], which
//! enforces what the guest may do (no `/` or `..` in names, nothing mutated
//! through a read-only share).
//!
//! [`FuseSession`] serves a share to an in-process virtio-fs device (the
//! kvm engine's VMM): requests and replies as bytes, the same [`GuardedFs`].
//!
//! Threads: `nook-fs-TAG` accepts the connection and then serves the
//! vhost-user protocol; the virtqueue worker renames itself `nook-fs-TAG-q`.

#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod guard;
mod server;
mod session;
#[cfg(test)]
mod testing;

pub use backend::{FsBackend, FsMetrics};
pub use config::{Share, MAX_TAG_LEN};
pub use error::FsError;
pub use guard::GuardedFs;
pub use server::ShareServer;
pub use session::{FuseSession, MAX_MESSAGE_BYTES};

/// The FUSE server and file system types, for callers that drive
/// [`GuardedFs`] without a virtqueue (tests, benchmarks).
pub use fuse_backend_rs;
