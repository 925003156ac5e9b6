//! What can go wrong serving the E2B-compatible API.

use std::path::PathBuf;

/// Errors of this crate's operations (routes turn them into HTTP answers).
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {0} not found")]
    NoSandbox(String),
    #[error("template `{template}` not found: its nook image `{image}` is not in the store (build or pull it, e.g. `nook image build {image} --debian bookworm --packages python3`)")]
    NoTemplate { template: String, image: String },
    #[error("cannot read the image store")]
    Store(#[source] Box<nook::ImageError>),
    #[error("cannot build the base template image `{image}`")]
    BaseImage {
        image: String,
        #[source]
        source: Box<nook::ImageError>,
    },
    #[error("cannot {op} sandbox {id}")]
    Session {
        op: &'static str,
        id: String,
        #[source]
        source: nook_serve::SessionError,
    },
    #[error("sandbox {0} is already paused")]
    AlreadyPaused(String),
    #[error("cannot start the server's runtime")]
    Runtime(#[source] std::io::Error),
}
