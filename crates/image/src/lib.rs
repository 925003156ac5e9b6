//! The host side of nook images: a content-addressed image store that pulls
//! from OCI registries, imports OCI layouts and `docker save` archives,
//! builds Debian roots with mmdebstrap, unpacks layers safely (whiteouts,
//! links, no escapes from the root) and turns each image into a read-only
//! ext4 root filesystem file that the VM attaches as a virtio-blk disk.
//!
//! See `docs/images.md` for the store layout.
#![forbid(unsafe_code)]

mod archive;
mod debian;
pub mod digest;
mod error;
pub mod layer;
mod lock;
pub mod manifest;
mod registry;
pub mod rootfs;
mod store;

pub use debian::{DebianSteps, MIRROR_ENV};
pub use digest::{Digest, DigestError};
pub use error::ImageError;
pub use registry::{PullOptions, RegistryAuth};
pub use store::{GcReport, ImageConfig, ImageInfo, ImageStore};

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
