//! nook: run commands inside hardware-isolated Linux microVMs.
//!
//! ```no_run
//! use nook::{Vm, VmConfig};
//! let vm = Vm::start(VmConfig::default())?;
//! let out = vm.exec(["uname", "-r"]).output()?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! vm.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`Vm`] boots on an engine (QEMU's `microvm`, or nook's own KVM VMM),
//! waits for the guest agent, and runs commands through [`ExecBuilder`].
#![forbid(unsafe_code)]

mod balloon;
mod bare;
mod boot;
mod config;
mod conn;
mod desktop;
mod ending;
mod engine;
mod error;
mod exec;
pub mod exit_code;
mod files;
mod leftovers;
mod lock;
mod net;
mod pool;
mod share;
mod snapshot;
pub mod stdio;
mod storage;
mod template;
mod vm;

pub use balloon::{BalloonConfig, MemoryStats, DEFAULT_STATS_INTERVAL_S};
pub use bare::{boot_bare, BareBootError, BareConfig, BareEnding, BareExit};
pub use boot::KVM_AUTO_BOOT_TIMEOUT;
pub use config::{
    check_memory, check_vcpus, memory_limit_mib, vcpu_limit, EngineKind, ResourceLimit, VmConfig,
    MIN_MEMORY_MIB,
};
pub use desktop::{DesktopError, DesktopErrorKind, GuestDesktop, MAX_DESKTOP_IMAGE};
pub use ending::{GuestEnded, GuestEnding};
pub use engine::select::{probe_kvm, select_engine, EngineChoice, KvmVerdict, FAULT_KVM_HARDWARE};
pub use engine::EngineId;
pub use error::chain as error_chain;
pub use error::{is_disk_full, DISK_FULL_HINT};
pub use error::{
    BootFailure, BootReport, ChannelLoss, ExecError, MachineExit, ProtocolViolation, VmError,
};
pub use exec::{Child, ChildHandle, ChildStdin, ExecBuilder, ExecEvent, ExitStatus, Output};
pub use files::{FileError, FileErrorKind, FileKind, FileStat, GuestFiles, ReadSummary};
pub use leftovers::{gc_leftovers, LeftoverGc};
pub use lock::{LockError, LockHolder, VolumeLock};
pub use net::NicSpec;
pub use nook_assets::{default_home, Assets};
pub use nook_image::{DebianSteps, ImageConfig, ImageError, ImageInfo, ImageStore, PullOptions};
pub use nook_net::ParseError as NetParseError;
pub use nook_net::{
    EgressRule, HostEntry, NetConfig, NetStats, PortMapping, Protocol, PublishedPort, RefusedFlow,
};
pub use nook_proto::desktop as desktop_proto;
pub use nook_proto::{
    fit_within, scale_edge, scale_point, BootWords, Coordinate, DesktopAction, DesktopReply,
    DesktopRequest, DesktopResult, Pipe, ScrollDirection, Winsize,
};
pub use nook_seccomp::set_confine_enabled;
pub use nook_seccomp::set_enabled as set_seccomp_enabled;
pub use nook_vmm::probe::{ProbeTrial, Ring0Speed};
pub use pool::{Pool, PoolConfig, PoolError, PoolStats, PooledVm};
pub use share::ShareConfig;
pub use snapshot::{
    list_snapshots, named_snapshot, remove_snapshot, scan_snapshots, snapshots_dir, SharedPath,
    Snapshot, SnapshotManifest, SnapshotScan,
};
pub use storage::{
    make_ext4, ImageRoot, Volume, VolumeError, VolumeMount, VolumeStore, DEFAULT_VOLUME_SIZE,
};
pub use template::{gc_templates, templates_dir, TemplateGc};
pub use vm::{prepare_assets, Vm, VmOrigin, BASE_CMDLINE};

/// What host-side hardening this process applies to the threads and
/// processes it starts for VMs (see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Hardening {
    /// Per-thread seccomp filters (off: `NOOK_NO_SECCOMP=1`).
    pub seccomp: bool,
    /// Landlock, dropped capabilities, no new privileges and resource
    /// limits (off: `NOOK_NO_CONFINE=1`).
    pub confine: bool,
    /// The kernel's Landlock ABI version (`None`: no Landlock; the other
    /// measures still apply).
    pub landlock_abi: Option<u32>,
}

/// The hardening in force for this process.
pub fn hardening() -> Hardening {
    Hardening {
        seccomp: nook_seccomp::enabled(),
        confine: nook_seccomp::confine_enabled(),
        landlock_abi: nook_seccomp::landlock_abi(),
    }
}
