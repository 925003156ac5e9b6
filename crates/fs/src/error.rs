//! Errors of the share server.

use std::path::PathBuf;

/// What can go wrong setting up or running a share.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The share's configuration is unusable.
    #[error("invalid share {field}: {reason}")]
    InvalidShare {
        field: &'static str,
        reason: &'static str,
    },
    /// The shared host directory cannot be opened.
    #[error("cannot open shared directory {path}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The vhost-user socket cannot be created.
    #[error("cannot listen on vhost-user socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon cannot be created.
    /// The vhost-user daemon cannot be created (vhost-user-backend's error
    /// type implements only `Display`, so its text is kept).
    #[error("cannot create the vhost-user-fs daemon for share {tag}: {cause}")]
    Daemon { tag: String, cause: String },
    /// A server thread cannot be spawned.
    #[error("cannot spawn the server thread for share {tag}")]
    Spawn {
        tag: String,
        #[source]
        source: std::io::Error,
    },
}
