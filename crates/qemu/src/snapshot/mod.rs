//! Snapshots of a running guest, and clones restored from them.
//!
//! A snapshot is QEMU's own migration stream, written through a file
//! descriptor handed over QMP (`getfd` + `migrate fd:NAME`: QEMU 7.2 has no
//! `file:` URI, and the seccomp sandbox forbids `exec:`), plus a manifest
//! that lets [`QemuVm::restore`] rebuild the identical command line. A
//! restore starts QEMU with `-incoming defer` and feeds it the stream with
//! `migrate-incoming fd:N`, N being the state file inherited at spawn.
//!
//! Guest RAM goes one of two ways (see [`GuestRam`]):
//!
//! - **stream**: RAM travels inside the stream; a restore copies every used
//!   page back into fresh anonymous memory.
//! - **file**: the VM's RAM is a shared file; the stream skips it
//!   (`x-ignore-shared`) and the snapshot keeps a sparse copy of the file.
//!   Clones map that copy `share=off`: copy-on-write, nothing is loaded.
//!
//! On-disk layout (`dir` as passed to [`QemuVm::snapshot`]):
//!
//! ```text
//! dir/
//!   manifest.json   format, QEMU version, config minus run_dir, sizes, CRC32 of state
//!   state           QEMU migration stream (device state; all RAM in stream mode)
//!   memory          guest RAM image, sparse, memory_mib MiB long (file mode only)
//! ```
//!
//! Everything is written into a hidden sibling `.NAME.partial-PID-NANOS`,
//! fsynced, then renamed to `dir`: a directory named `dir` is always a
//! complete snapshot, and an interrupted one leaves only the hidden
//! sibling.
//!
//! Modules: `migration` drives QEMU (QMP `migrate` out, `migrate-incoming`
//! in), `manifest` is the manifest's format and the rules by which a
//! restore rebuilds the QEMU invocation from it, `files` holds the file
//! helpers (hidden directory, checksums, sparse copy).

mod files;
mod manifest;
mod migration;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{QemuConfig, QemuDiskConfig};
use crate::error::QemuError;

/// Name of the manifest inside a snapshot directory; written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the migration stream inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the guest RAM image inside a snapshot directory (file mode).
pub const MEMORY_FILE: &str = "memory";

pub(crate) const FORMAT: &str = "nook-qemu-snapshot";
pub(crate) const FORMAT_VERSION: u64 = 1;

/// What the guest does once its state is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSnapshot {
    /// Runs again if it was running before (QMP `cont`).
    #[default]
    Resume,
    /// Stays paused; [`QemuVm::resume`] continues it later.
    StayPaused,
}

/// Where a snapshot keeps guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMemory {
    /// Inside the migration stream (`state`).
    Stream,
    /// In the `memory` file, mapped copy-on-write by restores.
    File,
}

impl SnapshotMemory {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapshotMemory::Stream => "stream",
            SnapshotMemory::File => "file",
        }
    }
}

/// How long the parts of taking a snapshot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTimings {
    /// From `stop` to `cont` (or to the end of the RAM copy when the guest
    /// stays paused): the guest's downtime.
    pub paused: Duration,
    /// QEMU writing the migration stream.
    pub save: Duration,
    /// Copying the guest RAM file (file mode; zero otherwise).
    pub memory_copy: Duration,
    /// The whole call, including fsync, checksum and manifest.
    pub total: Duration,
}

/// A snapshot as its manifest describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuSnapshotInfo {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The config the VM ran with, `run_dir` empty and `cmdline` as passed
    /// to the kernel (TSC hint included, `tsc_hint` off).
    pub config: QemuConfig,
    /// Where guest RAM is kept.
    pub memory: SnapshotMemory,
    /// The QEMU version that wrote the stream, e.g. `7.2.22`.
    pub qemu_version: String,
    /// Size of the migration stream file.
    pub state_bytes: u64,
    /// Bytes of guest RAM actually stored in the `memory` file (its holes
    /// excluded); zero in stream mode.
    pub memory_data_bytes: u64,
    /// CRC-32 of the state file.
    pub state_crc32: u32,
    /// Set when this value comes from [`QemuVm::snapshot`].
    pub timings: Option<SnapshotTimings>,
}

/// How the restoring side runs QEMU, and the changes a restore may make
/// to the snapshot's configuration. Anything that shapes the device model
/// stays as recorded; how QEMU is started (binary, sandbox, extra
/// arguments) is decided here, and the manifest must agree with it or the
/// restore is refused ([`crate::QemuSnapshotError::Untrusted`]).
#[derive(Debug, Clone)]
pub struct QemuRestoreConfig {
    /// The QEMU binary; `None` means [`crate::locate_qemu`] (`NOOK_QEMU`,
    /// else `PATH`). It must be the one the snapshot was taken with.
    pub binary: Option<PathBuf>,
    /// Run QEMU under its seccomp sandbox (the default).
    pub sandbox: bool,
    /// Extra arguments for QEMU (none by default).
    pub extra_args: Vec<String>,
    /// Replacement disks, one per snapshot disk, in order, with the same
    /// read-only flags: a clone needs its own copy of every writable disk
    /// (QEMU's image locking refuses to share one).
    pub disks: Option<Vec<QemuDiskConfig>>,
    /// Leave the restored guest paused instead of continuing it.
    pub paused: bool,
    /// Check the state file against the manifest's CRC-32 before starting
    /// QEMU (cheap in file mode, where the state is small). Sizes are
    /// always checked.
    pub verify_state: bool,
    /// How long QEMU may take to load the state.
    pub load_timeout: Duration,
    /// The back end stream of the snapshot's NIC (required when it has
    /// one): a clone gets its own network back end.
    pub net: Option<std::sync::Arc<std::os::unix::net::UnixStream>>,
}

impl Default for QemuRestoreConfig {
    fn default() -> Self {
        QemuRestoreConfig {
            binary: None,
            sandbox: true,
            extra_args: Vec::new(),
            disks: None,
            paused: false,
            verify_state: true,
            load_timeout: Duration::from_secs(120),
            net: None,
        }
    }
}

impl QemuSnapshotInfo {
    /// Reads the manifest of the snapshot in `dir`.
    pub fn open(dir: &Path) -> Result<QemuSnapshotInfo, QemuError> {
        manifest::read(dir).map_err(|source| QemuError::SnapshotRestore {
            dir: dir.to_owned(),
            source,
        })
    }
}
