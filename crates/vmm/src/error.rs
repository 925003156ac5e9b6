//! The crate's top-level error.

use std::path::PathBuf;

use crate::arch::x86_64::acpi::AcpiError;
use crate::arch::x86_64::boot::BootError;
use crate::arch::x86_64::regs::RegsError;
use crate::config::ConfigError;
use crate::devices::bus::BusError;
use crate::devices::virtio::block::BlockError;
use crate::vstate::memory::MemoryError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmCreateError;

/// Errors starting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error("invalid vm configuration")]
    Config(#[from] ConfigError),
    /// Guest memory.
    #[error("cannot set up guest memory")]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or command line.
    #[error("cannot load the guest")]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error("cannot write acpi tables")]
    Acpi(#[from] AcpiError),
    /// Boot page tables / GDT.
    #[error("cannot write boot page tables")]
    Regs(#[from] RegsError),
    /// The KVM VM.
    #[error("cannot create the vm")]
    VmCreate(#[from] VmCreateError),
    /// A vCPU.
    #[error("cannot set up a vcpu")]
    Vcpu(#[from] VcpuError),
    /// A disk.
    #[error("cannot set up a disk")]
    Block(#[from] BlockError),
    /// Device address conflict (a bug).
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    /// The serial output file.
    #[error("cannot create serial output file {path}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Wiring a device to KVM (irqfd, ioeventfd, eventfd) failed.
    #[error("cannot wire {what}")]
    Device {
        /// Which device and what.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Spawning a thread failed.
    #[error("cannot spawn thread {name}")]
    Spawn {
        /// Thread name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Taking or restoring a snapshot.
    #[error("snapshot failed")]
    Snapshot(#[from] crate::snapshot::KvmSnapshotError),
    /// A VM made ahead of time does not fit the machine put into it (a
    /// bug).
    #[error("the prepared kvm vm does not fit this machine")]
    ShellMismatch,
    /// The VM has no balloon device to set.
    #[error("the vm has no balloon device: configure one (KvmConfig::balloon)")]
    NoBalloon,
    /// A host-side operation failed while the VM ran.
    #[error("{what} failed")]
    Failed {
        /// The operation.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
