//! Errors of the library boundary.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nook_proto::{FrameError, Kind, MsgError};

use crate::exit_code;

/// Starting, talking to or stopping a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("invalid VM configuration: {0}")]
    Config(&'static str),
    #[error("invalid VM size")]
    Resources(#[source] crate::config::ResourceLimit),
    #[error("cannot find a static guest agent `nook-agent` (looked at {searched}): run `bash scripts/setup`, which builds it, or set NOOK_AGENT to its path")]
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
    #[error("cannot start the VM's network")]
    Net(#[source] nook_net::NetError),
    #[error("cannot share {path}: {reason}")]
    ShareHost { path: PathBuf, reason: String },
    #[error("cannot serve a host directory share")]
    Share(#[source] nook_fs::FsError),
    #[error("cannot create the VM's runtime directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the VM failed to boot: {cause}{report}")]
    Boot {
        cause: BootFailure,
        /// What the engine and the console said. Boxed: it is rare, and
        /// keeps every `Result<_, VmError>` small.
        report: Box<BootReport>,
    },
    #[error("the engine gave no agent channel")]
    NoAgentChannel,
    #[error("agent channel I/O failed")]
    Channel(#[source] io::Error),
    #[error("lost the connection to the guest agent")]
    ChannelLost(#[source] ChannelLoss),
    #[error("the guest agent broke the protocol")]
    Protocol(#[source] ProtocolViolation),
    #[error("snapshot {path} cannot be restored with {option}: {why}")]
    NotRestorable {
        path: PathBuf,
        option: &'static str,
        why: String,
    },
    #[error("snapshot {path} is unusable: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },
    /// A snapshot is where a new one was to go (made meanwhile by another
    /// process, when it was not there at the start).
    #[error("snapshot {path} already exists: remove it first, or replace it (`nook snapshot create --force`)")]
    SnapshotExists { path: PathBuf },
    #[error("cannot write snapshot {path}")]
    SnapshotIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guest agent speaks protocol {agent}, this nook speaks {host}: rebuild the guest assets with `nook setup`")]
    VersionMismatch { agent: u32, host: u32 },
    #[error("the VM has no memory balloon: start it with --balloon (VmConfig::balloon)")]
    NoBalloon,
    #[error("a balloon of {balloon_mib} MiB does not fit a VM of {memory_mib} MiB: give less than its memory")]
    BalloonTooLarge { balloon_mib: u32, memory_mib: u32 },
    /// The caller's cancel flag ([`crate::VmConfig::cancel`]) was set; what
    /// was under way was undone.
    #[error("cancelled")]
    Cancelled,
}

/// What a failed boot left to read: the engine's own output (QEMU's
/// stderr, often the real reason; shown only when there is any) and the
/// guest console's last lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReport {
    pub engine_log: String,
    pub console: String,
}

impl std::fmt::Display for BootReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.engine_log.trim_end();
        if !log.is_empty() {
            write!(f, "\n--- the engine's own output ---\n{log}")?;
        }
        write!(
            f,
            "\n--- last lines of the guest console ---\n{}",
            self.console
        )
    }
}

/// Why a VM did not come up. Messages of nested causes are part of this
/// one's, because [`VmError::Boot`] shows them before the console tail.
#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    #[error("the agent channel closed during boot")]
    ChannelClosed,
    #[error("the guest agent did not report ready within {0:?}")]
    NotReady(Duration),
    #[error("boot cancelled")]
    Cancelled,
    #[error("{0}")]
    MachineEnded(MachineExit),
    /// The console shows an ending after which no hello can come.
    #[error("{0}")]
    DeadEnd(&'static str),
    /// A failure the console explains.
    #[error("{cause} ({hint})")]
    Hinted {
        cause: Box<BootFailure>,
        hint: &'static str,
    },
}

/// How an engine's machine ended (or why nobody can tell).
#[derive(Debug, Clone, thiserror::Error)]
pub enum MachineExit {
    #[error("qemu exited ({0})")]
    Qemu(std::process::ExitStatus),
    #[error("the VM ended: {0}")]
    Kvm(nook_vmm::ExitReason),
    #[error("cannot check on qemu: {0}")]
    QemuFailed(Arc<nook_qemu::QemuError>),
    #[error("the VMM failed: {0}")]
    KvmFailed(Arc<nook_vmm::VmmError>),
}

/// Why the connection to the guest agent broke. Every command running on
/// the connection learns the same cause, hence `Clone` (and the `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelLoss {
    #[error("the VM closed the agent channel")]
    Closed,
    #[error("agent channel I/O failed")]
    Io(#[source] Arc<io::Error>),
    #[error("cannot send a frame to the agent")]
    Send(#[source] Arc<FrameError>),
    #[error("the VM is gone")]
    VmGone,
    /// The guest ended (a panic, a reboot, ...): said with the console.
    #[error("{0}")]
    GuestEnded(Arc<crate::ending::GuestEnded>),
}

impl ChannelLoss {
    pub(crate) fn io(e: io::Error) -> ChannelLoss {
        ChannelLoss::Io(Arc::new(e))
    }
}

/// How the guest agent broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("the agent refused to start: {message}")]
    Refused { message: String },
    #[error("expected {expected}, the agent sent {got:?}")]
    Unexpected { expected: &'static str, got: Kind },
    #[error("expected the agent's hello on the control stream, it came on stream {0}")]
    HelloStream(u32),
    #[error("cannot decode the agent's message")]
    Message(#[source] MsgError),
    #[error("cannot read the agent's hello")]
    Hello(#[source] io::Error),
    #[error("the agent overran the flow-control window of {pipe:?}")]
    WindowOverrun {
        pipe: nook_proto::Pipe,
        #[source]
        source: nook_proto::WindowOverrun,
    },
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
    #[error("the command did not finish within its timeout and the guest did not stop it: the guest seems hung\n--- last lines of the guest console ---\n{console}")]
    Timeout { console: String },
    #[error("the command already ended")]
    Finished,
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The command runs elsewhere (a session) and reaching it failed.
    #[error("the session failed")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ExecError {
    /// The exit code a shell would give for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::NotFound(_) => exit_code::NOT_FOUND,
            ExecError::NotExecutable(_) => exit_code::NOT_EXECUTABLE,
            ExecError::Timeout { .. } => exit_code::TIMEOUT,
            _ => exit_code::NOOK_FAILED,
        }
    }
}

/// What to do when a host disk is full, appended by [`chain`].
pub const DISK_FULL_HINT: &str = "the disk is full: free space on it (`nook gc` removes unused images, templates and leftovers of killed runs) or set NOOK_HOME to a larger disk, then try again";

/// `e` and its sources, joined with ": ", for log lines and the messages
/// every front end shows; ends with [`DISK_FULL_HINT`] when the cause is
/// a full disk.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    if is_disk_full(e) {
        out.push_str(": ");
        out.push_str(DISK_FULL_HINT);
    }
    out
}

/// Whether `e` or one of its sources is a full disk or exhausted quota
/// (`ENOSPC`, `EDQUOT`), as an `io::Error` or as the text of one that
/// crossed a process boundary (QEMU reports a failed save as text).
pub fn is_disk_full(e: &dyn std::error::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let says_so = |err: &dyn std::error::Error| {
        let text = err.to_string();
        text.contains("No space left on device") || text.contains("Disk quota exceeded")
    };
    let mut next = e.source();
    while let Some(err) = next {
        let raw = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error);
        if matches!(raw, Some(ENOSPC | EDQUOT)) || says_so(err) {
            return true;
        }
        next = err.source();
    }
    says_so(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_anywhere_in_the_chain_gets_the_hint_and_nothing_else_does() {
        let full = VmError::SnapshotIo {
            path: "/h/snapshots/s".into(),
            source: io::Error::from_raw_os_error(28),
        };
        let msg = chain(&full);
        assert!(
            msg.starts_with("cannot write snapshot /h/snapshots/s: No space left on device"),
            "{msg}"
        );
        assert!(msg.ends_with(DISK_FULL_HINT), "{msg}");
        // As text from another process (QEMU's failed save).
        let text = io::Error::other("Unable to write to file: No space left on device");
        assert!(is_disk_full(&text));
        let other = VmError::SnapshotIo {
            path: "/h/snapshots/s".into(),
            source: io::Error::from_raw_os_error(13),
        };
        assert!(!is_disk_full(&other));
        assert!(!chain(&other).contains(DISK_FULL_HINT));
    }
}
