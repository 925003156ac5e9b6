//! Snapshots of running VMs and copy-on-write restore.
//!
//! [`crate::KvmVm::snapshot`] parks every vCPU out of `KVM_RUN`, locks every
//! device, and writes vCPU, irqchip, PIT, clock and device state plus the
//! guest memory (zero pages as holes) to one file, atomically.
//! [`crate::KvmVm::restore`] maps that memory `MAP_PRIVATE`, so restoring is
//! cheap, and VMs restored from one file share its untouched pages.
//! [`KvmRestorer`] restores one snapshot many times into KVM VMs made
//! ahead of time, and reuses them when the restored VMs end.
//! The file format is in `docs/snapshot.md` and [`format`].

mod create;
mod error;
pub mod format;
mod handles;
pub mod memory;
pub mod persist;
mod restore;
pub(crate) mod restorer;
pub mod state;

pub use create::{AfterSnapshot, SnapshotInfo};
pub use error::KvmSnapshotError;
pub use format::{parse_snapshot, HostCompat, SnapshotFormatError, SnapshotHeader};
pub(crate) use handles::SnapshotHandles;
pub use persist::Persist;
pub use restore::{read_snapshot, KvmRestoreConfig};
pub use restorer::{KvmRestorer, RestorerStats};
pub use state::MicrovmState;
