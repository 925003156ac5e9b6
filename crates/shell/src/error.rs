//! Errors of the dev shell.

use std::path::PathBuf;

/// A line or script that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
    /// More input could complete it (an open quote, `if` without `fi`).
    pub incomplete: bool,
}

/// What can go wrong running the shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the session failed")]
    Session(#[source] Box<nook_serve::SessionError>),
    #[error("the VM did not start")]
    Boot(#[source] Box<nook_serve::SessionError>),
    #[error("cannot prepare the workspace volume")]
    Volume(#[source] nook::VolumeError),
    #[error("the VM's boot thread panicked")]
    BootPanicked,
    #[error("the sidecar at {socket} failed: {message}")]
    Sidecar { socket: PathBuf, message: String },
    #[error("the host sandbox cannot run: {0}")]
    Sandbox(String),
}

impl ShellError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ShellError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<nook_serve::SessionError> for ShellError {
    fn from(e: nook_serve::SessionError) -> Self {
        ShellError::Session(Box::new(e))
    }
}
