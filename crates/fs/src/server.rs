//! Serving one share on a vhost-user socket, on nook's own threads.
//!
//! [`ShareServer::start`] opens the shared directory and binds the socket
//! before returning, so QEMU (started afterwards) finds it listening. The
//! `nook-fs-TAG` thread accepts QEMU's connection and serves it until QEMU
//! hangs up; [`ShareServer::stop`] (or drop) ends a server that was never
//! connected and waits for the threads.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{FsBackend, ShareFs};
use crate::config::Share;
use crate::error::FsError;
use crate::guard::GuardedFs;

/// How long [`ShareServer::stop`] waits for the server threads.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The passthrough file system over `share.host_dir`, behind the guard.
pub(crate) fn share_fs(share: &Share) -> Result<ShareFs, FsError> {
    share.validate()?;
    let open_err = |source| FsError::OpenDir {
        path: share.host_dir.clone(),
        source,
    };
    let root = share
        .host_dir
        .to_str()
        .ok_or_else(|| open_err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let cfg = Config {
        root_dir: root.to_owned(),
        // Names are validated (GuardedFs does it again, for every op).
        do_import: true,
        xattr: false,
        // The host may change the directory under the guest: keep the
        // guest's caches short-lived, as virtiofsd's `auto` does.
        cache_policy: CachePolicy::Auto,
        writeback: false,
        ..Config::default()
    };
    let fs = PassthroughFs::new(cfg).map_err(open_err)?;
    fs.import().map_err(open_err)?;
    Ok(GuardedFs::new(fs, share.read_only))
}

/// A running vhost-user-fs server for one share.
#[derive(Debug)]
pub struct ShareServer {
    tag: String,
    socket: PathBuf,
    backend: Arc<FsBackend>,
    done: Option<mpsc::Receiver<()>>,
}

impl ShareServer {
    /// Opens `share`, listens on `socket` and serves the first connection
    /// on a `nook-fs-TAG` thread.
    pub fn start(share: &Share, socket: &Path) -> Result<ShareServer, FsError> {
        let fs = Arc::new(share_fs(share)?);
        let name = thread_name(&share.tag);
        let backend = Arc::new(FsBackend::new(fs, format!("{name}-q")));
        let mut listener = Listener::new(socket, true).map_err(|source| FsError::Listen {
            path: socket.to_owned(),
            source,
        })?;
        let mut daemon = VhostUserDaemon::new(
            name.clone(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| FsError::Daemon {
            tag: share.tag.clone(),
            cause: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel();
        let worker_backend = backend.clone();
        let tag = share.tag.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            match daemon.start(&mut listener) {
                Ok(()) => {
                    if let Err(e) = daemon.wait() {
                        tracing::debug!("nook-fs: share {tag}: connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!("nook-fs: share {tag}: no connection: {e}"),
            }
            worker_backend.stop_workers();
            drop(daemon);
            let _ = tx.send(());
        });
        if let Err(source) = spawned {
            backend.stop_workers();
            return Err(FsError::Spawn {
                tag: share.tag.clone(),
                source,
            });
        }
        tracing::debug!(
            "nook-fs: serving {} as {} ({}) on {}",
            share.host_dir.display(),
            share.tag,
            if share.read_only { "ro" } else { "rw" },
            socket.display()
        );
        Ok(ShareServer {
            tag: share.tag.clone(),
            socket: socket.to_owned(),
            backend,
            done: Some(rx),
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The vhost-user socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The backend, for its metrics.
    pub fn backend(&self) -> &FsBackend {
        &self.backend
    }

    /// Ends the server. Call it after the VM is gone: a connected server
    /// ends when QEMU hangs up, one never connected is woken here. Waits a
    /// short while for the threads, then leaves them to finish on their own.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        // Wakes an accept that is still waiting; the connection closes at
        // once, which ends the server. Harmless once QEMU has connected.
        let _ = UnixStream::connect(&self.socket);
        if done.recv_timeout(STOP_GRACE).is_err() {
            tracing::debug!("nook-fs: share {}: server still running", self.tag);
            self.backend.stop_workers();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for ShareServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `nook-fs-TAG`, cut to what a Linux thread name holds (15 bytes) minus
/// room for the worker's `-q`.
fn thread_name(tag: &str) -> String {
    let mut name = format!("nook-fs-{tag}");
    name.truncate(13);
    name
}
