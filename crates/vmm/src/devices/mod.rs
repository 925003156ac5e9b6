//! Emulated devices: the port/MMIO bus, legacy PC devices and virtio.
pub mod bus;
pub mod legacy;
pub mod virtio;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, carrying on with the data if a panicking thread poisoned it
/// (device state stays usable; a panic is already a bug being reported).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
