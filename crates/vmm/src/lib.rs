//! nook's own virtual machine monitor on KVM: the `kvm` engine.
//!
//! ```no_run
//! use nook_vmm::{ExitReason, SerialSink, KvmVm, KvmConfig};
//! let mut cfg = KvmConfig::new("/boot/vmlinuz");
//! cfg.cmdline = "console=ttyS0 reboot=k".into();
//! cfg.serial = SerialSink::Stdout;
//! let mut vm = KvmVm::start(cfg)?;
//! assert_eq!(vm.wait()?, ExitReason::PowerOff);
//! # Ok::<(), nook_vmm::VmmError>(())
//! ```
//!
//! # Machine
//! x86_64, in-kernel irqchip and PIT, COM1 8250 (IRQ 4), an i8042 that only
//! resets, ACPI (hardware-reduced FADT, DSDT with `\_S5`, MADT), and
//! virtio-mmio devices (console, block, rng) announced on the kernel
//! command line. See [`arch::x86_64::layout`] for the memory map.
//!
//! # Kernels
//! bzImage (64-bit boot protocol), ELF with a PVH note (Linux `vmlinux`,
//! 32-bit PVH entry) and plain 64-bit ELF (entered in long mode at
//! `e_entry` with the first 4 GiB identity-mapped, RSI = Linux zero page).
//!
//! **bzImage fast path** ([`KernelFormat::BzImagePvh`]): a bzImage whose
//! payload is LZ4 (legacy frames), gzip, zstd or uncompressed, and whose
//! `vmlinux` carries a PVH note, is decompressed on the host
//! ([`arch::x86_64::payload`]) and that `vmlinux` is loaded and entered
//! through PVH, skipping the bzImage's in-guest decompressor (up to a
//! second of ring-0 work on hardware, minutes where ring 0 is emulated).
//! The setup header's command-line size and initrd limit still apply.
//! Anything else (xz, bzip2, lzma, lzo payloads, no PVH note) boots the
//! classic way ([`KernelFormat::BzImage`]); a `debug` log line says which
//! path was taken and why.
//!
//! # How a VM ends ([`ExitReason`])
//! * [`ExitReason::PowerOff`]: the guest wrote `0x34` (SLP_EN | SLP_TYP=5)
//!   to the ACPI sleep control port 0x600. Linux does this on `poweroff`
//!   (the ACPI tables make it install its ACPI power-off handler; do not
//!   pass `acpi=off`).
//! * [`ExitReason::Reset`]: i8042 command 0xfe on port 0x64 (Linux
//!   `reboot=k`), or 1 written to the ACPI reset port 0x602 (`reboot=a`).
//!   The VMM never reboots a guest.
//! * [`ExitReason::TripleFault`]: a vCPU triple-faulted (`reboot=t`).
//! * [`ExitReason::Stopped`]: the host called [`KvmVm::stop`] or dropped the VM.
//! * [`ExitReason::InternalError`]: KVM could not run the guest further;
//!   the [`VcpuFault`] says how (the internal-error suberror and data, or
//!   the entry failure reason), where (RIP) and what code was there, read
//!   through the guest's page tables.
//!
//! Host-side failures while running (a failing `KVM_RUN` ioctl, the event
//! loop dying) come back from [`KvmVm::wait`] as [`VmmError::Failed`].
//!
//! # Threads and signals
//! One `nook-vcpu{N}` thread per vCPU and one `nook-vmm` device thread.
//! vCPU threads are kicked out of `KVM_RUN` with the real-time signal
//! `SIGRTMIN + 1`, for which the crate installs a handler.

pub mod arch;
mod assemble;
mod builder;
pub mod config;
mod detach;
pub mod devices;
mod error;
mod event_loop;
mod machine;
pub mod probe;
pub mod snapshot;
pub mod vstate;

pub use arch::x86_64::boot::{BootSetup, KernelFormat};
pub use config::{KvmConfig, KvmDiskConfig, KvmNetConfig, KvmShareConfig, MmioHook, SerialSink};
pub use devices::virtio::balloon::{BalloonStats, KvmBalloonConfig};
pub use devices::virtio::fs::FsServer;
pub use error::VmmError;
pub use machine::{boot, KvmVm};
pub use snapshot::{
    AfterSnapshot, KvmRestoreConfig, KvmRestorer, KvmSnapshotError, RestorerStats, SnapshotInfo,
};
pub use vstate::exit::ExitReason;
pub use vstate::fault::{FaultKind, VcpuFault};
