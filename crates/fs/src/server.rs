//! Serving one share on a vhost-user socket, on nook's own threads.
//!
//! [`ShareServer::start`] opens the shared directory and binds the socket
//! before returning, so QEMU (started afterwards) finds it listening. The
//! `nook-fs-TAG` thread accepts QEMU's connection and serves it until QEMU
//! hangs up; [`ShareServer::stop`] (or drop) ends a server that was never
//! connected and waits for the threads.

use std::os::unix::net::{UnixListener, UnixStream};
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
        let backend = Arc::new(FsBackend::new(
            fs,
            format!("{name}-q"),
            nook_seccomp::ThreadConfinement::file_server(vec![share.reach()]),
        ));
        // Bound here, not by `Listener::new`: that listener removes its
        // socket file when dropped, on the confined thread, which may not
        // touch files. [`ShareServer::stop`] removes it.
        let _ = std::fs::remove_file(socket);
        let mut listener = UnixListener::bind(socket)
            .map(Listener::from)
            .map_err(|e| FsError::Listen {
                path: socket.to_owned(),
                source: vhost::vhost_user::Error::SocketError(e),
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
            // Confined before QEMU's first byte: this thread accepts the
            // connection and starts the protocol thread, which inherits it.
            if let Err(e) = confine_protocol_thread() {
                tracing::error!("nook-fs: share {tag}: {e}");
                worker_backend.stop_workers();
                drop(daemon);
                let _ = tx.send(());
                return;
            }
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

/// The `nook-fs-TAG` thread's confinement: no file access, no
/// capabilities, no new privileges, and the `fs_proto` seccomp filter.
fn confine_protocol_thread() -> std::io::Result<()> {
    let confined = nook_seccomp::confine_thread(&nook_seccomp::ThreadConfinement::nothing())
        .map_err(std::io::Error::other)?;
    let applied =
        nook_seccomp::apply(nook_seccomp::ThreadFilter::FsProto).map_err(std::io::Error::other)?;
    tracing::debug!("nook-fs: protocol thread: confinement {confined:?}, seccomp {applied:?}");
    Ok(())
}

/// `nook-fs-TAG`, cut to what a Linux thread name holds (15 bytes) minus
/// room for the worker's `-q`.
fn thread_name(tag: &str) -> String {
    let mut name = format!("nook-fs-{tag}");
    name.truncate(13);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{status_field, thread_status};

    /// The thread that waits for QEMU runs with no new privileges, no
    /// capabilities and the `fs_proto` filter before any connection.
    #[test]
    fn the_protocol_thread_is_confined_before_a_connection() {
        nook_seccomp::set_enabled(true);
        nook_seccomp::set_confine_enabled(true);
        let dir = tempfile::tempdir().unwrap();
        let share = Share {
            host_dir: dir.path().to_owned(),
            tag: "proto".into(),
            read_only: false,
        };
        let server = ShareServer::start(&share, &dir.path().join("sock")).unwrap();
        let status = thread_status("nook-fs-proto", "Seccomp:\t2").expect("thread found");
        assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
        assert_eq!(
            status_field(&status, "CapEff:"),
            "0000000000000000",
            "{status}"
        );
        assert_eq!(
            status_field(&status, "CapPrm:"),
            "0000000000000000",
            "{status}"
        );
        server.stop();
    }
}
