//! nook's QEMU engine: runs a guest in QEMU's `microvm` machine.
//!
//! [`QemuVm::start`] turns a [`QemuConfig`] into a QEMU process whose
//! serial console goes to a log file in the VM's run directory, whose
//! `nook.agent` virtio-serial port is a connected [`UnixStream`] on the host
//! ([`QemuVm::take_agent_channel`]), and whose QMP monitor is negotiated
//! lazily on first use ([`QemuVm::qmp`]). The QEMU process cannot outlive
//! its [`QemuVm`] or the nook process; see the `spawn` module for how.
//!
//! [`QemuVm::snapshot`] saves a running guest into a directory (QEMU's
//! migration stream plus a manifest, and with [`GuestRam::SharedFile`] a
//! sparse RAM image), and [`QemuVm::restore`] starts clones from it, mapping
//! that RAM image copy-on-write; the layout is in the `snapshot` module and
//! the crate's README.
//!
//! ```no_run
//! # fn main() -> Result<(), nook_qemu::QemuError> {
//! use nook_qemu::{locate_qemu, Accel, QemuConfig, QemuVm};
//! use std::time::Duration;
//! let mut cfg = QemuConfig::new(locate_qemu()?, Accel::Tcg, "/boot/vmlinuz", "/run/nook/vm1");
//! cfg.initrd = Some("/var/lib/nook/initrd".into());
//! let mut vm = QemuVm::start(cfg)?;
//! let agent = vm.take_agent_channel();
//! let status = vm.qmp_execute("query-status", None)?;
//! vm.shutdown(Duration::from_secs(2))?;
//! # let _ = (agent, status); Ok(()) }
//! ```
//!
//! [`UnixStream`]: std::os::unix::net::UnixStream

#![deny(unsafe_code)]

mod balloon;
mod cmdline;
mod config;
mod error;
pub mod qmp;
mod reach;
mod snapshot;
mod spawn;
mod sys;
mod tsc;
mod vm;

pub use balloon::QemuBalloonStats;
pub use cmdline::{MACHINE, SANDBOX};
pub use config::{
    locate_qemu, Accel, DiskCache, GuestRam, QemuBalloonConfig, QemuConfig, QemuDiskConfig,
    QemuNicConfig, QemuShareConfig, AGENT_PORT_NAME, GUEST_RAM_FILE, QEMU_BINARY_NAME, QEMU_ENV,
};
pub use error::{Diagnostics, QemuError, QemuSnapshotError};
pub use qmp::{Qmp, QmpError, QmpEvent};
pub use snapshot::{
    AfterSnapshot, QemuRestoreConfig, QemuSnapshotInfo, SnapshotMemory, SnapshotTimings,
    MANIFEST_FILE, MEMORY_FILE, STATE_FILE,
};
pub use tsc::TSC_CACHE_FILE;
pub use vm::{QemuVm, CONSOLE_LOG, DIAGNOSTIC_CONSOLE_LINES, STDERR_LOG};
