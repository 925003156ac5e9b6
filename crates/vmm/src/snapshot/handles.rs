//! What a [`crate::KvmVm`] keeps so it can be snapshotted.

use std::sync::{Arc, Mutex};

use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::vstate::pause::PauseControl;

/// Handles on the live parts of a VM that a snapshot reads.
#[derive(Debug)]
pub(crate) struct SnapshotHandles {
    /// Shared with every vCPU thread.
    pub pause: Arc<PauseControl>,
    /// COM1 (also on the port bus).
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Virtio transports in bus order (also on the MMIO bus).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Number of vCPUs.
    pub vcpus: u8,
}
