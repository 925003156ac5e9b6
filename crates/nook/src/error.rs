//! Errors of the library boundary.

use std::io;
use std::path::PathBuf;

/// Starting, talking to or stopping a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid VM configuration: {0}")]
    Config(&'static str),
    #[error("cannot find the guest agent binary `nook-agent` (looked in {searched}): run `scripts/setup` or set NOOK_AGENT to its path")]
    AgentNotFound { searched: String },
    #[error("cannot prepare the guest kernel and initramfs")]
    Assets(#[source] nook_assets::AssetsError),
    #[error("the kvm engine cannot be used: {0}")]
    KvmUnavailable(String),
    #[error("the qemu engine failed")]
    Qemu(#[source] nook_qemu::QemuError),
    #[error("the kvm engine failed")]
    Kvm(#[source] nook_vmm::VmmError),
    #[error("cannot prepare the VM's disks")]
    Storage(#[source] crate::VolumeError),
    #[error("cannot serve a host directory share")]
    Share(#[source] nook_fs::FsError),
    #[error("cannot create the VM's runtime directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the VM failed to boot: {reason}\n--- last lines of the guest console ---\n{console}")]
    Boot { reason: String, console: String },
    #[error("agent channel I/O failed")]
    Channel(#[source] io::Error),
    #[error("lost the connection to the guest agent: {0}")]
    ChannelLost(String),
    #[error("the guest agent broke the protocol: {0}")]
    Protocol(String),
    #[error("snapshot {path} is unusable: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },
    #[error("cannot write snapshot {path}")]
    SnapshotIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guest agent speaks protocol {agent}, this nook speaks {host}: rebuild the guest assets with `nook setup`")]
    VersionMismatch { agent: u32, host: u32 },
}

/// Running a command in a VM failed (the command itself did not get to
/// report an exit status).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotExecutable(String),
    #[error("the guest refused the request: {0}")]
    BadRequest(String),
    #[error("the guest agent failed: {0}")]
    Agent(String),
    #[error("the command did not finish within its timeout and the guest did not stop it")]
    Timeout,
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl ExecError {
    /// The exit code a shell would give for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::NotFound(_) => 127,
            ExecError::NotExecutable(_) => 126,
            ExecError::Timeout => 124,
            _ => 125,
        }
    }
}
