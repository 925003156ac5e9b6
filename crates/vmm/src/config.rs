//! What a VM is made of: [`KvmConfig`] and its parts, validated once by
//! [`KvmConfig::validate`] before anything is built.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use std::sync::Arc;

use crate::arch::x86_64::layout::VIRTIO_IRQS;
use crate::devices::virtio::fs::{FsServer, FS_TAG_BYTES};

/// Where the guest's COM1 output goes.
pub enum SerialSink {
    /// Discarded.
    Null,
    /// The host process's stdout.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Stdout => f.write_str("Stdout"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Writer(_) => f.write_str("Writer(..)"),
        }
    }
}

/// Test hook: host code the vCPU thread runs when the guest writes to
/// `addr` (8 bytes claimed on the MMIO bus). For tests that need something
/// to happen on a vCPU thread, such as the seccomp filter test; never set
/// in real use.
#[derive(Clone)]
pub struct MmioHook {
    /// Guest-physical address (outside RAM and the virtio windows).
    pub addr: u64,
    /// Called on every guest write there, on the writing vCPU's thread.
    pub call: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for MmioHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioHook")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone)]
pub struct KvmDiskConfig {
    /// Image file.
    pub path: PathBuf,
    /// Refuse guest writes (the file is also opened read-only).
    pub read_only: bool,
    /// Serial number returned to the guest (GET_ID), up to 20 bytes; empty
    /// means `nook-disk{N}`.
    pub id: String,
}

/// A host directory shared with the guest through an in-process virtio-fs
/// device (mounted in the guest with `mount -t virtiofs TAG DIR`).
#[derive(Debug, Clone)]
pub struct KvmShareConfig {
    /// The tag (1 to 36 bytes).
    pub tag: String,
    /// Answers the device's FUSE requests (nook: `nook_fs::FuseSession`).
    pub server: Arc<dyn FsServer>,
}

/// A virtio-net NIC on a back end stream of length-prefixed Ethernet
/// frames (see [`crate::devices::virtio::net::encode_frame`]).
#[derive(Debug)]
pub struct KvmNetConfig {
    /// The MAC address the guest reads from config space.
    pub mac: [u8; 6],
    /// The back end's end of the link.
    pub stream: UnixStream,
}

/// Everything needed to start a VM.
#[derive(Debug)]
pub struct KvmConfig {
    /// Kernel: bzImage, ELF with a PVH note (vmlinux) or plain 64-bit ELF.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line. `virtio_mmio.device=` entries for the virtio
    /// devices are appended to it.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs (1..=[`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Where COM1 output goes.
    pub serial: SerialSink,
    /// Backend of the virtio-console port (the agent channel): bytes the
    /// guest writes to the port go to this stream, bytes read from it go to
    /// the guest. No console device if `None`.
    pub console: Option<UnixStream>,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ... after the
    /// console if any; see [`crate::KvmVm`] for the device order).
    pub disks: Vec<KvmDiskConfig>,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// virtio-fs shares, after the rng device.
    pub shares: Vec<KvmShareConfig>,
    /// A virtio-net NIC (after the other devices); none when `None`.
    pub net: Option<KvmNetConfig>,
    /// A virtio-balloon device (the last device); none when `None`.
    pub balloon: Option<crate::devices::virtio::balloon::KvmBalloonConfig>,
    /// Test hook on the MMIO bus (see [`MmioHook`]); `None` in real use.
    #[doc(hidden)]
    pub mmio_hook: Option<MmioHook>,
}

/// Most vCPUs supported (APIC ids fit the MADT and CPUID fields used).
pub const MAX_VCPUS: u8 = 64;
/// Least guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u32 = 2;

/// Invalid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Too little memory.
    #[error("guest memory of {0} MiB is too small (at least {MIN_MEMORY_MIB} MiB)")]
    MemoryTooSmall(u32),
    /// vCPU count out of range.
    #[error("{0} vcpus requested; 1 to {MAX_VCPUS} are supported")]
    Vcpus(u8),
    /// More virtio devices than interrupt lines.
    #[error("{0} virtio devices requested; at most {max} are supported", max = VIRTIO_IRQS.len())]
    TooManyDevices(usize),
    /// A share's tag is empty or longer than the device's tag field.
    #[error("share tag `{0}` must be 1 to {FS_TAG_BYTES} bytes")]
    ShareTag(String),
}

impl KvmConfig {
    /// A configuration with defaults: 128 MiB, one vCPU, serial discarded,
    /// no devices.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib: 128,
            vcpus: 1,
            serial: SerialSink::Null,
            console: None,
            disks: Vec::new(),
            rng: false,
            shares: Vec::new(),
            net: None,
            balloon: None,
            mmio_hook: None,
        }
    }

    /// Number of virtio devices this configuration asks for.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.console.is_some())
            + self.disks.len()
            + usize::from(self.rng)
            + self.shares.len()
            + usize::from(self.net.is_some())
            + usize::from(self.balloon.is_some())
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        let n = self.virtio_device_count();
        if n > VIRTIO_IRQS.len() {
            return Err(ConfigError::TooManyDevices(n));
        }
        if let Some(s) = self
            .shares
            .iter()
            .find(|s| s.tag.is_empty() || s.tag.len() > FS_TAG_BYTES)
        {
            return Err(ConfigError::ShareTag(s.tag.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_bad_sizes() {
        let mut c = KvmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        c.vcpus = 2;
        c.memory_mib = 1;
        assert!(c.validate().is_err());
        c.memory_mib = 64;
        c.disks = (0..11)
            .map(|i| KvmDiskConfig {
                path: format!("/d{i}").into(),
                read_only: true,
                id: String::new(),
            })
            .collect();
        assert!(matches!(c.validate(), Err(ConfigError::TooManyDevices(11))));
        assert_eq!(
            format!("{:?}", SerialSink::Writer(Box::new(Vec::new()))),
            "Writer(..)"
        );
    }
}
