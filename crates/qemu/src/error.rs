//! Errors of the QEMU engine, and the diagnostics a failed boot carries.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nook_fsutil::IoError;

use crate::qmp::QmpError;

/// What went wrong starting, talking to or stopping a QEMU guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "qemu-system-x86_64 not found on PATH: install QEMU (Debian: apt-get install \
         qemu-system-x86) or set NOOK_QEMU to the binary's path"
    )]
    BinaryNotFound,
    #[error("qemu binary {path} is not usable: point NOOK_QEMU at qemu-system-x86_64")]
    BinaryUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read kernel image {path}: check the kernel path in the VM config")]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read initramfs {path}: check the initrd path in the VM config")]
    InitrdUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read disk image {path}: check the disk path in the VM config")]
    DiskUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run directory {path} is not usable: create it before starting the VM")]
    RunDirUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid qemu config: {field} {reason}")]
    InvalidConfig {
        field: &'static str,
        reason: &'static str,
    },
    #[error("cannot create {path} for the VM")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the {channel} socket pair")]
    Socketpair {
        channel: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the landlock rules for qemu (NOOK_NO_CONFINE=1 starts it without)")]
    Landlock(#[source] nook_seccomp::ConfineError),
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu (pid {pid}) exited early with {status}\n{report}")]
    Exited {
        pid: u32,
        status: ExitStatus,
        report: Box<Diagnostics>,
    },
    #[error("guest in qemu (pid {pid}) gave no sign of life within {waited:?}\n{report}")]
    BootTimeout {
        pid: u32,
        waited: Duration,
        report: Box<Diagnostics>,
    },
    #[error("cannot wait for qemu (pid {pid})")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot kill qemu (pid {pid})")]
    Kill {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("qmp of qemu (pid {pid}) is unusable after an earlier failure: stop the VM")]
    QmpUnavailable { pid: u32 },
    #[error("qmp request to qemu (pid {pid}) failed")]
    Qmp {
        pid: u32,
        #[source]
        source: QmpError,
    },
    #[error("snapshot directory {dir} already exists: remove it or choose another path")]
    SnapshotExists { dir: PathBuf },
    #[error("cannot take a snapshot into {dir}")]
    SnapshotTake {
        dir: PathBuf,
        #[source]
        source: QemuSnapshotError,
    },
    #[error("cannot restore snapshot {dir}")]
    SnapshotRestore {
        dir: PathBuf,
        #[source]
        source: QemuSnapshotError,
    },
    #[error("qemu (pid {pid}) could not save the guest's state into {dir}: {desc}\n{report}")]
    SaveFailed {
        dir: PathBuf,
        pid: u32,
        desc: String,
        report: Box<Diagnostics>,
    },
    #[error(
        "qemu (pid {pid}) could not load snapshot {dir}: {desc}; the snapshot is damaged or \
         does not fit this QEMU or device model: take it again\n{report}"
    )]
    LoadFailed {
        dir: PathBuf,
        pid: u32,
        desc: String,
        report: Box<Diagnostics>,
    },
}

/// What can be wrong with a snapshot's files, taking or restoring it.
#[derive(Debug, thiserror::Error)]
pub enum QemuSnapshotError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "{path} is missing: this is not a snapshot, or taking it was interrupted; \
         take the snapshot again"
    )]
    ManifestMissing { path: PathBuf },
    #[error("manifest {path} is not valid json: the snapshot is damaged; take it again")]
    ManifestSyntax {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "manifest {path} is not a valid snapshot manifest: the snapshot is damaged; take it again"
    )]
    ManifestInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "snapshot format {format} version {version} is not supported (expected {} \
         version {}): take the snapshot again with this nook",
        crate::snapshot::FORMAT,
        crate::snapshot::FORMAT_VERSION
    )]
    UnsupportedFormat { format: String, version: u64 },
    #[error(
        "{path} is {actual} bytes but the manifest says {expected}: the snapshot is \
         truncated or was modified; take it again"
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} does not match its checksum: the snapshot is corrupt; take it again")]
    ChecksumMismatch { path: PathBuf },
    #[error("path {path} is not valid UTF-8 and cannot be recorded in a snapshot manifest")]
    NonUtf8Path { path: PathBuf },
    #[error(
        "snapshot was taken with QEMU {snapshot} but {binary} is QEMU {running}: restore \
         with the same QEMU version or take the snapshot again"
    )]
    QemuVersion {
        snapshot: String,
        running: String,
        binary: PathBuf,
    },
    #[error(
        "disk override {index} does not match the snapshot's disk ({reason}): give one \
         disk per snapshot disk, in order, with the same read-only flag"
    )]
    DiskOverride { index: usize, reason: &'static str },
    #[error(
        "the snapshot's manifest records {field} `{recorded}`, but this nook starts QEMU with \
         `{expected}`: a snapshot cannot choose how QEMU runs; take the snapshot again"
    )]
    Untrusted {
        field: &'static str,
        recorded: String,
        expected: String,
    },
}

/// What QEMU and the guest left behind: QEMU's stderr and the tail of the
/// serial console. Attached to boot failures so that a kernel panic or a bad
/// QEMU flag shows up in the error message itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// QEMU's standard error (capped at the last 8 KiB).
    pub stderr: String,
    /// The last lines of the guest's serial console.
    pub console_tail: String,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stderr = self.stderr.trim_end();
        let console = self.console_tail.trim_end();
        if stderr.is_empty() {
            writeln!(f, "qemu stderr: (empty)")?;
        } else {
            writeln!(f, "qemu stderr:\n{stderr}")?;
        }
        if console.is_empty() {
            write!(f, "guest console: (empty: the kernel printed nothing)")
        } else {
            write!(f, "guest console (tail):\n{console}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_show_both_parts_or_say_they_are_empty() {
        let d = Diagnostics {
            stderr: "qemu: bad flag\n".into(),
            console_tail: "Kernel panic - not syncing\n".into(),
        };
        let s = d.to_string();
        assert!(s.contains("qemu stderr:\nqemu: bad flag"), "{s}");
        assert!(s.contains("guest console (tail):\nKernel panic"), "{s}");
        let empty = Diagnostics::default().to_string();
        assert!(empty.contains("(empty)"), "{empty}");
        assert!(empty.contains("printed nothing"), "{empty}");
    }
}
