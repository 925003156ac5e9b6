//! The engine boundary: every engine turns a [`MachineSpec`] into a running
//! [`Machine`] that hands back the agent channel.

pub mod kvm;
pub mod qemu;
pub mod select;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

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
    /// `Some(how)` once the machine has ended.
    fn exited(&mut self) -> Option<crate::error::MachineExit>;
    /// Waits up to `grace` for the machine to end by itself.
    fn wait_exit(&mut self, grace: Duration) -> bool;
    /// Ends the machine now and releases everything it holds.
    fn kill(&mut self);
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
