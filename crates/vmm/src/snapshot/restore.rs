//! Restoring a snapshot: [`KvmVm::restore`] restores one snapshot once;
//! [`KvmRestorer`](super::KvmRestorer) does the work (and keeps VMs ready
//! for many restores). Here: the restore configuration, reading and
//! checking the file, and what the state may ask for.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::error::KvmSnapshotError;
use super::format::{parse_snapshot, SnapshotFormatError, SnapshotHeader, HEADER_SIZE};
use super::restorer::KvmRestorer;
use super::state::MicrovmState;
use crate::arch::x86_64::layout::VIRTIO_IRQS;
use crate::config::{KvmShareConfig, SerialSink, MAX_VCPUS};
use crate::devices::virtio::device_type;
use crate::error::VmmError;
use crate::machine::KvmVm;

/// Most queues a saved virtio device may have (nook's devices have one or
/// two; a state asking for more is not one this VMM wrote).
const MAX_QUEUES: usize = 8;

/// How to reconnect a restored VM to the host.
#[derive(Debug)]
pub struct KvmRestoreConfig {
    /// Where COM1 output goes.
    pub serial: SerialSink,
    /// New backend of the virtio-console port, if the snapshot has one
    /// (`None`: output is discarded, no input).
    pub console: Option<UnixStream>,
    /// Disk images to use instead of the snapshot's, in device order;
    /// empty: reopen the paths recorded in the snapshot. Each must have
    /// the recorded size. VMs restored from one snapshot that write to a
    /// disk need their own copies.
    pub disks: Vec<PathBuf>,
    /// The servers of the snapshot's virtio-fs shares, in device order and
    /// with the recorded tags (a FUSE server is a host resource: it is not
    /// in the snapshot).
    pub shares: Vec<KvmShareConfig>,
    /// New back end stream of the virtio-net device, if the snapshot has
    /// one (`None`: the NIC's link is down for good).
    pub net: Option<UnixStream>,
}

impl Default for KvmRestoreConfig {
    fn default() -> Self {
        Self {
            serial: SerialSink::Null,
            console: None,
            disks: Vec::new(),
            shares: Vec::new(),
            net: None,
        }
    }
}

/// Reads and checks header and state of the snapshot at `path`.
pub fn read_snapshot(
    path: &Path,
) -> Result<(File, SnapshotHeader, MicrovmState), KvmSnapshotError> {
    let io = |op| nook_fsutil::io_err(op, path);
    let format = |source| KvmSnapshotError::Format {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io("open"))?;
    let len = file.metadata().map_err(io("stat"))?.len();
    let mut head = vec![0u8; HEADER_SIZE.min(len as usize)];
    file.read_exact_at(&mut head, 0).map_err(io("read"))?;
    let header = SnapshotHeader::decode(&head).map_err(format)?;
    let state_end = header.state_offset + header.state_len;
    if len < header.file_len() {
        return Err(format(SnapshotFormatError::Truncated {
            needed: header.file_len(),
            actual: len,
        }));
    }
    let mut bytes = vec![0u8; state_end as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io("read"))?;
    let (header, state) = parse_snapshot(&bytes, len).map_err(format)?;
    Ok((file, header, state))
}

impl KvmVm {
    /// Restores the snapshot at `path` as a new running VM. Guest memory
    /// is mapped copy-on-write from the file: any number of VMs can be
    /// restored from one snapshot, each seeing only its own writes, and the
    /// file is never written. The file must not be truncated or rewritten
    /// in place while they run (taking a new snapshot to the same path
    /// replaces it, which is fine). To restore one snapshot many times,
    /// fast, use a [`KvmRestorer`].
    pub fn restore(path: &Path, cfg: KvmRestoreConfig) -> Result<KvmVm, VmmError> {
        KvmRestorer::open(path)?.restore(cfg)
    }
}

/// Checks what the state asks for against what this VMM can build.
pub(crate) fn check_machine(state: &MicrovmState) -> Result<(), KvmSnapshotError> {
    let n = state.vcpus.len();
    if n == 0 || n > usize::from(MAX_VCPUS) {
        return Err(KvmSnapshotError::Machine("vcpu count"));
    }
    if state
        .vcpus
        .iter()
        .enumerate()
        .any(|(i, v)| usize::from(v.index) != i)
    {
        return Err(KvmSnapshotError::Machine("vcpu order"));
    }
    if state.devices.len() > VIRTIO_IRQS.len() {
        return Err(KvmSnapshotError::Machine("too many virtio devices"));
    }
    if state
        .devices
        .iter()
        .any(|d| d.transport.queues.len() > MAX_QUEUES)
    {
        return Err(KvmSnapshotError::Machine("virtio queue count"));
    }
    Ok(())
}

/// Checks what the caller gave against what the state has.
pub(crate) fn check_config(
    state: &MicrovmState,
    cfg: &KvmRestoreConfig,
) -> Result<(), KvmSnapshotError> {
    let count = |t| {
        state
            .devices
            .iter()
            .filter(|d| d.transport.device_type == t)
            .count()
    };
    let disks = count(device_type::BLOCK);
    if !cfg.disks.is_empty() && cfg.disks.len() != disks {
        return Err(KvmSnapshotError::Config(
            "disks must be empty or list every disk of the snapshot",
        ));
    }
    if cfg.shares.len() != count(device_type::FS) {
        return Err(KvmSnapshotError::Config(
            "shares must list every share of the snapshot, in device order",
        ));
    }
    if cfg.console.is_some() && count(device_type::CONSOLE) == 0 {
        return Err(KvmSnapshotError::Config(
            "a console stream was given but the snapshot has no console",
        ));
    }
    if cfg.net.is_some() && count(device_type::NET) == 0 {
        return Err(KvmSnapshotError::Config(
            "a network stream was given but the snapshot has no NIC",
        ));
    }
    Ok(())
}
