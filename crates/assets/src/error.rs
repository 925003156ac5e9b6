//! The crate's error type.

use std::io;
use std::path::PathBuf;

use nook_fsutil::IoError;

use crate::cpio::CpioError;
use crate::modules::ModuleError;

/// Everything that can go wrong preparing guest assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// A cache file or directory operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The cache lock could not be taken.
    #[error("cannot lock the asset cache {path}: check that the directory is writable")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An input file (agent, busybox, local kernel) is unreadable.
    #[error("cannot read the {what} {path}: {hint}")]
    Input {
        /// What the file is ("guest agent", "busybox", "kernel image").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The guest agent is a dynamically linked executable, so it cannot run
    /// as the guest's `/init`.
    #[error(
        "the guest agent {path} is not a static executable ({problem}); a guest's /init \
         has no libc or loader: use the one scripts/setup builds \
         (target/x86_64-unknown-linux-gnu/release/nook-agent, built with \
         RUSTFLAGS=\"-C target-feature=+crt-static\")"
    )]
    AgentNotStatic {
        /// The agent file.
        path: PathBuf,
        /// What is wrong, e.g. "it asks for the loader /lib64/ld-linux-x86-64.so.2".
        problem: String,
    },
    /// An apt or dpkg tool is missing or could not be started.
    #[error(
        "cannot run {tool}: fetching Debian kernels needs apt and dpkg; \
         on other hosts pass a kernel with --kernel FILE"
    )]
    AptMissing {
        /// The tool.
        tool: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// apt does not know the package or gave no usable answer.
    #[error(
        "apt cannot resolve package {package} ({detail}): enable Debian's apt source \
         that ships linux-image-cloud-amd64 and run apt-get update, or pass --kernel FILE"
    )]
    AptResolve {
        /// The package asked for.
        package: String,
        /// What apt said or what was missing from its answer.
        detail: String,
    },
    /// `apt-get download` failed.
    #[error(
        "cannot download {package} with apt-get download ({detail}): check the network \
         and apt sources (apt-get update), or pass --kernel FILE"
    )]
    Download {
        /// The `name=version` downloaded.
        package: String,
        /// apt's exit status and last error line.
        detail: String,
    },
    /// The downloaded file is not what apt's index promised.
    #[error(
        "downloaded {package} has sha256 {actual} but apt expects {expected}: \
         run apt-get update and retry (nook setup --update)"
    )]
    Digest {
        /// The package.
        package: String,
        /// apt's SHA256 field.
        expected: String,
        /// What the file hashed to.
        actual: String,
    },
    /// The package could not be unpacked.
    #[error(
        "cannot extract kernel package {deb}: the file is corrupt; retry with nook setup --update"
    )]
    Extract {
        /// The .deb file.
        deb: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The package lacks a kernel image.
    #[error("package {deb} holds no {missing}: it is not a linux-image package; name one (e.g. linux-image-cloud-amd64)")]
    NotAKernelPackage {
        /// The .deb file.
        deb: PathBuf,
        /// What is missing.
        missing: &'static str,
    },
    /// The release of a local kernel cannot be told.
    #[error(
        "cannot tell the release of kernel {path}: pass its lib/modules/RELEASE directory \
         as the modules directory"
    )]
    KernelRelease {
        /// The kernel image.
        path: PathBuf,
    },
    /// The wanted modules cannot be resolved or read.
    #[error("cannot resolve kernel modules of kernel {release}")]
    Modules {
        /// The kernel release.
        release: String,
        /// The cause.
        #[source]
        source: ModuleError,
    },
    /// busybox could not list its applets.
    #[error(
        "cannot list applets with {path} --list-full: install busybox-static \
         (apt-get install busybox-static) or pass a static busybox"
    )]
    Busybox {
        /// The busybox binary.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The initramfs could not be written.
    #[error("cannot write initramfs {path}")]
    Initramfs {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CpioError,
    },
}

/// `map_err` helper for cache file operations.
pub(crate) fn cache_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> AssetsError {
    let path = path.into();
    move |source| AssetsError::Io(IoError { op, path, source })
}
