//! Errors of the session crate.

use std::path::{Path, PathBuf};

/// What can go wrong managing or talking to a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session name `{0}`: use 1-64 letters, digits, `_`, `.` or `-`")]
    BadName(String),
    #[error("no session named `{0}` (see `nook ps -a`)")]
    NoSuchSession(String),
    #[error("a session named `{0}` already exists: pick another --name or `nook rm` it")]
    Exists(String),
    #[error("session `{0}` is running: `nook stop` it first or use `nook rm -f`")]
    Running(String),
    #[error("session `{0}` is not running (see `nook ps -a`)")]
    NotRunning(String),
    #[error("session `{name}` did not start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable session file {path}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the session host broke the protocol: {0}")]
    Protocol(String),
    #[error("{message}")]
    Refused {
        code: crate::wire::SessionErrorCode,
        message: String,
    },
    #[error("lost the connection to the session")]
    Connection(#[source] std::io::Error),
    #[error("cannot start the VM")]
    Vm(#[source] Box<nook::VmError>),
    #[error("image `{0}` is not in the store: pull it first (`nook pull {0}`)")]
    NoImage(String),
    #[error("cannot find image `{reference}`")]
    Image {
        reference: String,
        #[source]
        source: Box<nook::ImageError>,
    },
    #[error("session `{0}` has no desktop: start one with `nook desktop start`")]
    NotADesktop(String),
    #[error("the display of session `{name}` did not start: {reason}")]
    DisplayFailed { name: String, reason: String },
    #[error("cannot serve the display over VNC: {0}")]
    ViewFailed(String),
    #[error("cannot build image `{reference}`")]
    ImageBuild {
        reference: String,
        #[source]
        source: Box<nook::ImageError>,
    },
}

impl SessionError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> SessionError {
        SessionError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
