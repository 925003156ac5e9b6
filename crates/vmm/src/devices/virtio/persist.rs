//! Snapshot state shared by the virtio devices: [`VirtqueueState`], the
//! type-erased [`SavedDevice`] a snapshot carries for each device, and what
//! a device needs to come back ([`RestoreContext`], [`HostBackends`]).
//!
//! Each device implements [`Persist`] in its own `persist.rs` and
//! [`VirtioPersist`] to say which host resources it takes on restore;
//! [`super::RESTORERS`] lists the device types a snapshot may hold.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

use super::block::BlockError;
use super::{IrqTrigger, VirtioDevice};
use crate::snapshot::persist::Persist;

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
    /// The saved bytes are not a state of this device type.
    #[error("saved state of virtio device type {device_type} cannot be decoded")]
    Decode {
        /// The device type.
        device_type: u32,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// The state could not be encoded.
    #[error("state of virtio device type {device_type} cannot be encoded")]
    Encode {
        /// The device type.
        device_type: u32,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// The snapshot has a virtio-fs device for a share the restore was not
    /// given (shares are handed in device order, matched by tag).
    #[error("the snapshot shares a directory under tag {0}: give a share with that tag")]
    MissingShare(String),
    /// This VMM has no device of the saved type, or the device cannot be
    /// snapshotted.
    #[error("virtio device type {0} does not support snapshots")]
    Unsupported(u32),
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
/// [`super::mmio::MmioTransportState`]): the device's own [`Persist::State`],
/// encoded by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// Virtio device type ([`super::device_type`]).
    pub device_type: u32,
    /// The device's state (postcard).
    pub state: Vec<u8>,
}

/// Host resources that restored devices reconnect to, handed out in
/// device order by [`VirtioPersist::constructor_args`].
#[derive(Debug, Default)]
pub struct HostBackends {
    /// The new stream of the (first) virtio-console, if any.
    pub console: Option<UnixStream>,
    /// Disk images replacing the saved paths, one per disk in order; when
    /// empty, disks reopen their saved paths.
    pub disks: VecDeque<PathBuf>,
    /// The servers of virtio-fs shares (tag, server), one per share in
    /// device order.
    pub shares: VecDeque<(String, Arc<dyn super::fs::FsServer>)>,
    /// The new back end stream of the virtio-net device, if any.
    pub net: Option<UnixStream>,
    /// Set by a restored balloon device: the host's handle on it.
    pub balloon: Option<Arc<super::balloon::BalloonControl>>,
}

/// A virtio device a snapshot can bring back.
pub trait VirtioPersist:
    VirtioDevice + Persist<Error = DeviceStateError> + Sized + 'static
{
    /// Its virtio device type.
    const DEVICE_TYPE: u32;

    /// Its constructor arguments, taking what it needs from `backends`;
    /// `ctx` is `Some` for a device the driver had activated.
    fn constructor_args(
        backends: &mut HostBackends,
        ctx: Option<RestoreContext>,
    ) -> Self::ConstructorArgs;

    /// Its state, encoded for a [`SavedDevice`].
    fn save_device(&self) -> Result<SavedDevice, DeviceStateError> {
        let state =
            postcard::to_allocvec(&self.save()).map_err(|source| DeviceStateError::Encode {
                device_type: Self::DEVICE_TYPE,
                source,
            })?;
        Ok(SavedDevice {
            device_type: Self::DEVICE_TYPE,
            state,
        })
    }
}

/// Brings one kind of device back from its saved bytes.
pub(crate) type RestoreFn = fn(
    &[u8],
    &mut HostBackends,
    Option<RestoreContext>,
) -> Result<Box<dyn VirtioDevice>, DeviceStateError>;

/// [`RestoreFn`] of device type `D`.
pub(crate) fn restore_device<D: VirtioPersist>(
    bytes: &[u8],
    backends: &mut HostBackends,
    ctx: Option<RestoreContext>,
) -> Result<Box<dyn VirtioDevice>, DeviceStateError> {
    let state: D::State =
        postcard::from_bytes(bytes).map_err(|source| DeviceStateError::Decode {
            device_type: D::DEVICE_TYPE,
            source,
        })?;
    let args = D::constructor_args(backends, ctx);
    Ok(Box::new(D::restore(args, &state)?))
}

/// The device `saved` describes, restored through [`super::RESTORERS`].
pub(crate) fn restore_saved(
    saved: &SavedDevice,
    backends: &mut HostBackends,
    ctx: Option<RestoreContext>,
) -> Result<Box<dyn VirtioDevice>, DeviceStateError> {
    let restore = super::RESTORERS
        .iter()
        .find(|(t, _)| *t == saved.device_type)
        .map(|(_, f)| *f)
        .ok_or(DeviceStateError::Unsupported(saved.device_type))?;
    restore(&saved.state, backends, ctx)
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
    fn saved_devices_restore_through_their_own_code() {
        use crate::devices::virtio::rng::Rng;
        use crate::devices::virtio::{device_type, VirtioDevice};

        let saved = Rng::new().save_state().unwrap();
        assert_eq!(saved.device_type, device_type::RNG);
        let bytes = postcard::to_allocvec(&saved).unwrap();
        let back: SavedDevice = postcard::from_bytes(&bytes).unwrap();
        let mut backends = HostBackends::default();
        let dev = restore_saved(&back, &mut backends, None).unwrap();
        assert_eq!(dev.device_type(), device_type::RNG);
        assert_eq!(dev.save_state().unwrap(), saved);

        let unknown = SavedDevice {
            device_type: 99,
            state: back.state.clone(),
        };
        assert!(matches!(
            restore_saved(&unknown, &mut backends, None),
            Err(DeviceStateError::Unsupported(99))
        ));
        // A block state that ends early.
        let garbage = SavedDevice {
            device_type: device_type::BLOCK,
            state: vec![0xff],
        };
        assert!(matches!(
            restore_saved(&garbage, &mut backends, None),
            Err(DeviceStateError::Decode {
                device_type: device_type::BLOCK,
                ..
            })
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
