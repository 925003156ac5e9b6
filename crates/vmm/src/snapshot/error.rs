//! Errors of taking and restoring snapshots.

use std::path::PathBuf;

use super::format::SnapshotFormatError;
use super::memory::SnapshotMemoryError;
use crate::devices::legacy::persist::SerialStateError;
use crate::devices::virtio::persist::DeviceStateError;
use crate::vstate::pause::PauseError;
use crate::vstate::vcpu_state::VcpuStateError;
use crate::vstate::vm_state::VmStateError;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum KvmSnapshotError {
    /// The file is not a valid snapshot (see the variants for which way).
    #[error("invalid snapshot file {path}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: SnapshotFormatError,
    },
    /// The snapshot was taken on a host this one cannot stand in for.
    #[error("snapshot was taken on another kind of host: {what} is {snapshot}, here {host}; take the snapshot on this host")]
    Incompatible {
        /// The field that differs.
        what: &'static str,
        /// Its value in the snapshot.
        snapshot: String,
        /// Its value here.
        host: String,
    },
    /// Reading or writing the snapshot file failed.
    #[error(transparent)]
    Io(#[from] nook_fsutil::IoError),
    /// The VM has ended (or is ending): nothing to snapshot.
    #[error("the vm is not running")]
    NotRunning,
    /// Pausing the vCPUs failed.
    #[error("cannot pause the vcpus")]
    Pause(#[from] PauseError),
    /// Restoring a vCPU failed.
    #[error("cannot restore a vcpu")]
    Vcpu(#[from] VcpuStateError),
    /// Saving or restoring irqchip, PIT or clock failed.
    #[error("cannot save or restore vm state")]
    VmState(#[from] VmStateError),
    /// A virtio device could not be saved or restored.
    #[error("cannot save or restore virtio device {index}")]
    Device {
        /// Slot of the device.
        index: usize,
        /// Why.
        #[source]
        source: DeviceStateError,
    },
    /// COM1 could not be restored.
    #[error("cannot restore the serial port")]
    Serial(#[from] SerialStateError),
    /// The memory section could not be mapped.
    #[error("cannot map guest memory from the snapshot")]
    Memory(#[from] SnapshotMemoryError),
    /// The state could not be encoded.
    #[error("cannot encode the vm state")]
    Encode(#[source] postcard::Error),
    /// The restore configuration does not fit the snapshot.
    #[error("restore configuration does not fit the snapshot: {0}")]
    Config(&'static str),
    /// The state describes a machine this VMM cannot build.
    #[error("snapshot describes an unsupported machine: {0}")]
    Machine(&'static str),
}
