//! The error type of the image store's public API.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use nook_fsutil::IoError;

use crate::digest::Digest;
use crate::layer::LayerBlobError;
use crate::manifest::ManifestError;

/// Everything the image store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file system operation on the store or an input failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The store on disk has a layout this code does not understand.
    #[error("image store {path} has layout {found:?}, expected {expected:?}: use a matching nook or move the store away")]
    StoreLayout {
        /// The store root.
        path: PathBuf,
        /// What the store says.
        found: String,
        /// What this code writes.
        expected: &'static str,
    },
    /// The reference does not parse.
    #[error("invalid image reference {0:?}: use NAME[:TAG] or NAME@sha256:DIGEST")]
    InvalidReference(String, #[source] oci_client::ParseError),
    /// Nothing in the store matches the reference.
    #[error("image {0} is not in the store: pull, import or build it first")]
    NotFound(String),
    /// A digest prefix matches several images.
    #[error("{0:?} matches several images: give more digest characters")]
    Ambiguous(String),
    /// A registry request failed.
    #[error("cannot {op} for {reference}: check the image name, the network and the credentials (plain-http registries must be loopback or listed in insecure_hosts)")]
    Registry {
        /// What was attempted.
        op: &'static str,
        /// The image.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// Content does not match the digest it was asked for by.
    #[error(
        "{what} hashes to {actual}, not to {expected}: the source is corrupt or was tampered with"
    )]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it was asked for by.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// Content is larger or smaller than its descriptor says.
    #[error("{what} is {actual} bytes, but its descriptor says {expected}: the source is corrupt")]
    SizeMismatch {
        /// What was checked.
        what: String,
        /// From the descriptor.
        expected: u64,
        /// What was read.
        actual: u64,
    },
    /// A manifest, index or config was refused.
    #[error("invalid {what}")]
    Manifest {
        /// Which document.
        what: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The image has no linux/amd64 variant.
    #[error("{reference} has no linux/amd64 image (it offers: {offered})")]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platforms its index lists.
        offered: String,
    },
    /// A layer could not be applied.
    #[error("cannot apply layer {layer} of image {image}")]
    Layer {
        /// The image's manifest digest.
        image: Digest,
        /// The layer blob.
        layer: Digest,
        /// Why.
        #[source]
        source: LayerBlobError,
    },
    /// An external tool is not installed.
    #[error("{tool} is not installed: install it with `apt-get install {package}`")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// An external tool failed.
    #[error("{tool} failed to {task} ({status}); its last output:\n{output}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// What it was asked to do.
        task: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its output.
        output: String,
    },
    /// An input archive or layout is malformed.
    #[error("{path} is not a usable {kind}: {problem}")]
    BadInput {
        /// The input.
        path: PathBuf,
        /// What it should be.
        kind: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("invalid {what} {value:?}: {rule}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// JSON metadata could not be read or written.
    #[error("cannot {op} {path}")]
    Json {
        /// What was attempted.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The private async runtime for registry access did not start.
    #[error("cannot start the async runtime for registry access")]
    Runtime(#[source] io::Error),
}

/// Builds an [`ImageError::Io`] mapper.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io(IoError { op, path, source })
}
