//! Snapshot state shared by the virtio devices: [`VirtqueueState`],
//! [`VirtioDeviceState`] and what a device needs to come back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

use super::block::{BlockError, BlockState};
use super::console::ConsoleState;
use super::rng::RngState;
use super::IrqTrigger;

/// Errors bringing a device back from its state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// A saved queue is not a valid queue (corrupt or foreign state).
    #[error("saved virtqueue {0} is invalid")]
    InvalidQueue(u16),
    /// The saved state does not belong to this kind of device.
    #[error("saved state is for a different device type")]
    WrongDevice,
    /// A disk could not be reopened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A disk's size changed since the snapshot.
    #[error("disk {path} has {found} sectors, the snapshot expects {expected}")]
    DiskSize {
        /// The image.
        path: std::path::PathBuf,
        /// Sectors in the snapshot.
        expected: u64,
        /// Sectors now.
        found: u64,
    },
    /// The console stream could not be set up.
    #[error("cannot set up the console stream")]
    Stream(#[source] std::io::Error),
}

/// A split virtqueue: configuration and ring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver finished configuring it.
    pub ready: bool,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Descriptor table (guest physical).
    pub desc_table: u64,
    /// Available ring (guest physical).
    pub avail_ring: u64,
    /// Used ring (guest physical).
    pub used_ring: u64,
}

impl VirtqueueState {
    /// The state of `queue`.
    pub fn save(queue: &Queue) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }

    /// A queue in this state; `index` names it in the error.
    pub fn restore(&self, index: u16) -> Result<Queue, DeviceStateError> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|_| DeviceStateError::InvalidQueue(index))
    }
}

/// The device half of a virtio device's state (the transport half is
/// [`super::mmio::MmioTransportState`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-console.
    Console(ConsoleState),
    /// virtio-blk.
    Block(BlockState),
    /// virtio-rng.
    Rng(RngState),
}

/// What an active device gets back on restore (the restored counterpart
/// of [`super::ActivateContext`]).
#[derive(Debug, Clone)]
pub struct RestoreContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<IrqTrigger>,
}

impl IrqTrigger {
    /// Sets InterruptStatus to `bits` without raising the line.
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Raises the line again if an interrupt is pending (after a restore,
    /// an edge that KVM had not delivered yet would otherwise be lost).
    pub fn retrigger_pending(&self) {
        let bits = self.status();
        if bits != 0 {
            self.trigger(bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn virtqueue_state_round_trips() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(0x1000), None);
        q.set_avail_ring_address(Some(0x2000), None);
        q.set_used_ring_address(Some(0x3000), None);
        q.set_ready(true);
        q.set_next_avail(5);
        q.set_next_used(4);
        let s = VirtqueueState::save(&q);
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: VirtqueueState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let q2 = back.restore(0).unwrap();
        assert_eq!(VirtqueueState::save(&q2), s);
        assert_eq!(q2.next_avail(), 5);
        let mut bad = s;
        bad.size = 3;
        assert!(matches!(
            bad.restore(7),
            Err(DeviceStateError::InvalidQueue(7))
        ));
    }

    #[test]
    fn irq_status_restores_and_retriggers() {
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = IrqTrigger::new(evt.try_clone().unwrap());
        irq.retrigger_pending();
        assert!(evt.read().is_err(), "nothing pending, no interrupt");
        irq.restore_status(1);
        assert!(evt.read().is_err(), "restoring does not raise the line");
        irq.retrigger_pending();
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(irq.status(), 1);
    }
}
