//! Virtio devices over the virtio-mmio transport (virtio 1.x, "version 2").
//!
//! Each device is split in two: a `device.rs` implementing [`VirtioDevice`]
//! (features, config space, activation, host backend I/O) and a
//! `queue_handler.rs` holding the queue processing as a plain struct over
//! guest memory plus a [`SignalUsedQueue`], unit-tested with virtio-queue's
//! mock driver and no KVM. Events reach devices through [`mmio`]'s
//! transport, so there is no per-device event handler file.

pub mod balloon;
pub mod block;
pub mod console;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device type ids.
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// File system (virtio-fs).
    pub const FS: u32 = 26;
}

/// `VIRTIO_F_VERSION_1`: offered by every device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Errors of virtio devices. Any of them fails the device (it sets
/// `DEVICE_NEEDS_RESET`) but never the VM.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver broke the queue protocol (e.g. a bad available index).
    #[error("virtqueue {queue} is broken")]
    Queue {
        /// Queue index.
        queue: u16,
        /// Why.
        #[source]
        source: virtio_queue::Error,
    },
    /// The driver enabled a queue whose rings are outside guest memory.
    #[error("virtqueue {0} has rings outside guest memory")]
    InvalidQueue(u16),
    /// The driver activated the device without a queue it needs.
    #[error("virtqueue {0} is not ready at activation")]
    QueueNotReady(u16),
    /// Used ring update failed.
    #[error("cannot update used ring of virtqueue {queue}")]
    AddUsed {
        /// Queue index.
        queue: u16,
        /// Why.
        #[source]
        source: virtio_queue::Error,
    },
    /// Host-side I/O of the device failed.
    #[error("device backend i/o failed")]
    Backend(#[source] std::io::Error),
}

/// Tells the driver that a used ring changed (the "signal used queue" half
/// of queue processing; an irqfd in a VM, a counter in tests).
pub trait SignalUsedQueue {
    /// Signals that queue `index` has new used entries.
    fn signal_used_queue(&self, index: u16);
}

impl<T: SignalUsedQueue + ?Sized> SignalUsedQueue for Arc<T> {
    fn signal_used_queue(&self, index: u16) {
        (**self).signal_used_queue(index)
    }
}

impl<T: SignalUsedQueue + ?Sized> SignalUsedQueue for &T {
    fn signal_used_queue(&self, index: u16) {
        (**self).signal_used_queue(index)
    }
}

/// A device's interrupt: the InterruptStatus register plus an irqfd.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irqfd: EventFd,
}

impl IrqTrigger {
    /// Wraps `irqfd` (registered with KVM for the device's line).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("vmm: cannot raise virtio interrupt: {e}");
        }
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

impl SignalUsedQueue for IrqTrigger {
    fn signal_used_queue(&self, _index: u16) {
        self.trigger(INT_VRING);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them (unready ones included).
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<IrqTrigger>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Device features, without [`VIRTIO_F_VERSION_1`] (the transport adds it).
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError>;
    /// Stops the device and drops its queues (driver wrote status 0).
    fn reset(&mut self);
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError>;
    /// A host-side file descriptor to watch and for which events, if any.
    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        None
    }
    /// The backend file descriptor is ready.
    fn process_backend(&mut self, _events: EventSet) -> Result<(), VirtioError> {
        Ok(())
    }
    /// The device's snapshot state (a device that can be snapshotted
    /// returns [`persist::VirtioPersist::save_device`]).
    fn save_state(&self) -> Result<persist::SavedDevice, persist::DeviceStateError> {
        Err(persist::DeviceStateError::Unsupported(self.device_type()))
    }
}

/// Every virtio device type a snapshot can hold, with how to restore it.
/// A new device implements [`persist::VirtioPersist`] and joins this list.
pub(crate) const RESTORERS: &[(u32, persist::RestoreFn)] = &[
    (
        device_type::CONSOLE,
        persist::restore_device::<console::Console>,
    ),
    (device_type::BLOCK, persist::restore_device::<block::Block>),
    (device_type::RNG, persist::restore_device::<rng::Rng>),
    (device_type::FS, persist::restore_device::<fs::Fs>),
    (device_type::NET, persist::restore_device::<net::Net>),
    (
        device_type::BALLOON,
        persist::restore_device::<balloon::Balloon>,
    ),
];

/// `send` with `MSG_NOSIGNAL`: a closed peer gives `EPIPE`, not `SIGPIPE`.
pub(crate) fn send_nosignal(
    stream: &std::os::unix::net::UnixStream,
    buf: &[u8],
) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call and
    // the fd is owned by `stream`, which outlives the call.
    let n = unsafe {
        libc::send(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Pops the next available descriptor chain of `queue`.
pub(crate) fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    index: u16,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, VirtioError> {
    let mut iter = queue.iter(mem).map_err(|source| VirtioError::Queue {
        queue: index,
        source,
    })?;
    Ok(iter.next())
}

/// Returns a chain to the driver with `len` bytes written.
pub(crate) fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: u16,
    head: u16,
    len: u32,
) -> Result<(), VirtioError> {
    use virtio_queue::QueueT;
    queue
        .add_used(mem, head, len)
        .map_err(|source| VirtioError::AddUsed {
            queue: index,
            source,
        })
}

/// Test fixtures: guest memory and a counting [`SignalUsedQueue`].
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use std::cell::Cell;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::SignalUsedQueue;

    /// 1 MiB of mock guest memory at address 0.
    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .expect("mock guest memory")
    }

    /// Counts signals per call.
    #[derive(Debug, Default)]
    pub struct CountingSignal(pub Cell<u32>);

    impl SignalUsedQueue for CountingSignal {
        fn signal_used_queue(&self, _index: u16) {
            self.0.set(self.0.get() + 1);
        }
    }
}
