//! Why a layer could not be applied.

use std::io;
use std::path::PathBuf;

use nook_fsutil::IoError;
use rustix::io::Errno;

use super::path::{MemberPath, PathError};
use crate::digest::Digest;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The unpack root could not be opened.
    #[error("cannot open unpack root {0}")]
    OpenRoot(PathBuf, #[source] io::Error),
    /// The tar stream is unreadable (truncated, corrupt, bad compression).
    #[error("cannot read the layer's tar stream: the blob is corrupt or not a tar archive")]
    Tar(#[source] io::Error),
    /// A member path tries to leave the root.
    #[error("refused a layer member that would write outside the image root")]
    Path(#[from] PathError),
    /// A member would be written through a symlink.
    #[error("refused layer member {path}: its parent {via} is a symlink, and a layer may not write through a symlink")]
    ThroughSymlink {
        /// The member.
        path: String,
        /// The symlink on the way.
        via: String,
    },
    /// A member's parent exists but is not a directory.
    #[error("refused layer member {path}: {via} is not a directory")]
    NotADirectory {
        /// The member.
        path: String,
        /// The non-directory on the way.
        via: String,
    },
    /// A hard link's target is missing or a directory.
    #[error("refused hard link {path}: its target {target} {reason}")]
    LinkTarget {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// What is wrong with the target.
        reason: &'static str,
    },
    /// A whiteout names `.` or `..` or nothing.
    #[error("refused whiteout {0}: it names no file")]
    BadWhiteout(String),
    /// A file system operation on a member failed (its path is the
    /// member's path in the layer).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The uncompressed content does not hash to the config's diff id.
    #[error("layer content hashes to {actual}, not to its diff id {expected}: the blob is corrupt; pull or import the image again")]
    DiffId {
        /// From the image config.
        expected: Digest,
        /// What was read.
        actual: Digest,
    },
}

/// A mapper from a failed system call on `path` (a member) to a
/// [`LayerError::Io`].
pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a MemberPath,
) -> impl FnOnce(Errno) -> LayerError + 'a {
    move |e| LayerError::Io(IoError::new(op, path.to_string(), e.into()))
}
