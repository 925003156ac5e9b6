//! The engine boundary: every [`Engine`] turns a [`MachineSpec`] into a
//! running [`Machine`] that hands back the agent channel, or restores one
//! from a snapshot it took. Which engine ran is an [`EngineId`], recorded as
//! such in snapshot and template metadata.

pub mod kvm;
pub mod qemu;
pub mod select;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::VmError;

/// Which engine (and, for QEMU, which accelerator) runs a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineId {
    /// nook's own VMM on KVM.
    Kvm,
    /// QEMU's `microvm` accelerated by KVM.
    QemuKvm,
    /// QEMU's `microvm` under TCG (software emulation).
    QemuTcg,
}

impl EngineId {
    /// A short label such as `qemu (tcg)`.
    pub fn label(self) -> &'static str {
        match self {
            EngineId::Kvm => "kvm",
            EngineId::QemuKvm => "qemu (kvm)",
            EngineId::QemuTcg => "qemu (tcg)",
        }
    }

    /// The engine that boots and restores machines of this kind.
    pub(crate) fn engine(self) -> Box<dyn Engine> {
        match self {
            EngineId::Kvm => Box::new(kvm::KvmEngine),
            EngineId::QemuKvm => Box::new(qemu::QemuEngine { kvm_accel: true }),
            EngineId::QemuTcg => Box::new(qemu::QemuEngine { kvm_accel: false }),
        }
    }
}

impl std::fmt::Display for EngineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.label())
    }
}

/// Boots machines and restores them from their snapshots.
pub(crate) trait Engine {
    /// Boots `spec` and returns once the engine runs it.
    fn boot(&self, spec: &MachineSpec) -> Result<Box<dyn Machine>, VmError>;
    /// Starts a clone of the snapshot in `dir` (written by
    /// [`Machine::snapshot`] on this engine), with sockets and console log
    /// in `run_dir`, serving `shares` (the caller's own configuration, in
    /// the order and with the tags the snapshotted VM had).
    /// `nic` attaches the clone's NIC (if the snapshot has one) to a new
    /// network back end.
    fn restore(
        &self,
        dir: &Path,
        run_dir: &Path,
        shares: &[nook_fs::Share],
        nic: Option<&crate::NicSpec>,
    ) -> Result<Box<dyn Machine>, VmError>;
}

/// What to boot, independent of the engine.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Per-VM directory for sockets and the console log.
    pub run_dir: PathBuf,
    /// Host directory shares (virtio-fs), tagged as the guest mounts them.
    pub shares: Vec<nook_fs::Share>,
    /// Raw disk images, attached as virtio-blk devices.
    pub disks: Vec<DiskSpec>,
    /// The machine will be snapshotted to make clones: lay out its memory
    /// so that they can map it copy-on-write (QEMU: RAM in a shared file).
    pub snapshot_ready: bool,
    /// A NIC attached to nook's network back end; no network device when
    /// `None`.
    pub nic: Option<crate::NicSpec>,
    /// A memory balloon device; none when `None`.
    pub balloon: Option<crate::BalloonConfig>,
}

/// A raw disk image attached as a virtio-blk device. The guest finds it by
/// its serial (`/sys/block/vdX/serial`), never by its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// The guest cannot write to it (and the host opens it read-only).
    pub read_only: bool,
    /// At most 20 bytes of `[A-Za-z0-9._-]`.
    pub serial: String,
}

/// A booted machine, whatever engine runs it.
pub trait Machine: Send + std::fmt::Debug {
    /// The byte stream to the guest agent (taken once).
    fn take_channel(&mut self) -> Option<UnixStream>;
    /// The last `lines` lines of the guest console, for error messages.
    fn console_tail(&self, lines: usize) -> String;
    /// What the engine itself printed (QEMU's stderr), for error messages;
    /// empty when it said nothing or keeps no such log.
    fn engine_log(&self) -> String {
        String::new()
    }
    /// `Some(how)` once the machine has ended.
    fn exited(&mut self) -> Option<crate::error::MachineExit>;
    /// Waits up to `grace` for the machine to end by itself.
    fn wait_exit(&mut self, grace: Duration) -> bool;
    /// Ends the machine now and releases everything it holds.
    fn kill(&mut self);
    /// Asks the guest to put `balloon_mib` MiB into the balloon.
    fn set_balloon(&mut self, balloon_mib: u32) -> Result<(), crate::error::VmError>;
    /// The balloon's size, the guest's memory statistics and the host
    /// memory the machine holds (`memory_mib` is left 0 for the caller).
    fn memory_stats(&mut self) -> Result<crate::MemoryStats, crate::error::VmError>;
    /// Saves the machine's complete state into the new directory `dir`
    /// (which must not exist) and lets it run on.
    fn snapshot(&mut self, dir: &std::path::Path) -> Result<(), crate::error::VmError>;
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn tail_lines(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
