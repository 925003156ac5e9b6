//! The daemon's socket, its clients' threads, and its shutdown.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::desktop::Desktops;
use super::lines::{read_bounded_line, LineRead};
use super::pool::Pool;
use super::proto::MAX_LINE;
use super::sidecar::SidecarSession;
use crate::state::create_private_dir;

/// How the daemon runs (`nook serve` options).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// `$NOOK_HOME`.
    pub home: PathBuf,
    /// The `nook` binary (session hosts are this binary re-executed).
    pub exe: PathBuf,
    /// `auto`, `qemu` or `kvm`: the engine of the sessions it creates.
    pub engine: String,
    /// What sidecar sessions boot.
    pub beta_image: BetaImage,
    /// Warm sessions kept per pooled configuration.
    pub pool_size: usize,
    /// Stop (as on SIGTERM) once no client has been connected for this
    /// long and no kept session of its own runs (`--idle-exit`; the Python
    /// SDK starts its daemon so). `None`: serve until a signal.
    pub idle_exit: Option<Duration>,
}

/// What `devshell-vm` sidecar sessions boot (`nook serve --beta-image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BetaImage {
    /// nook's built-in minimal root (`--beta-image builtin`): a shell, no cargo.
    Builtin,
    /// An image in the store.
    Image(String),
    /// A Debian image with cargo and a C linker, built on first use
    /// ([`crate::toolchain::ensure_rust_image`]).
    RustToolchain,
}

/// Why the daemon could not serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("a daemon already serves {0}: stop it first or pick another --socket")]
    InUse(PathBuf),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the socket's directory")]
    Dir(#[source] crate::SessionError),
    #[error("cannot install the daemon's seccomp filter")]
    Seccomp(#[source] nook_seccomp::SeccompError),
}

/// `$NOOK_HOME/serve.sock`.
pub fn default_socket(home: &Path) -> PathBuf {
    home.join("serve.sock")
}

/// State shared by the daemon's threads.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) cfg: DaemonConfig,
    /// Sessions this daemon created (stopped when it stops).
    pub(crate) created: Mutex<BTreeSet<String>>,
    seq: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// Sidecar sessions by the client's `session_id`.
    pub(crate) sidecar: Mutex<HashMap<String, SidecarSession>>,
    /// Serialises sidecar session starts (one boot per `session_id`).
    pub(crate) sidecar_start: Mutex<()>,
    pub(crate) pool: Pool,
    /// The desktops of sessions that desktop requests reached.
    pub(crate) desktops: Desktops,
    /// Connected clients (both protocols), and when the last one left.
    clients: Mutex<Clients>,
}

/// The daemon's connected clients, for `--idle-exit`.
#[derive(Debug)]
struct Clients {
    connected: usize,
    idle_since: Instant,
}

impl Daemon {
    /// A fresh session name: `d<daemon pid>-<n>`.
    pub(crate) fn new_name(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{}-{n}", std::process::id())
    }

    /// Stops and removes session `name` (one this daemon created).
    pub(crate) fn destroy(&self, name: &str) {
        if let Err(e) = crate::remove(&self.cfg.home, name, true) {
            tracing::debug!("nook serve: removing session {name}: {e}");
        }
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.pool.forget(name);
        self.desktops.forget(name);
    }

    /// Whether `--idle-exit` ends the daemon now: no client for that long,
    /// and no session it created but the pool's warm ones (kept sessions,
    /// or ones a client that just left is still removing).
    fn idle_expired(&self) -> bool {
        let Some(after) = self.cfg.idle_exit else {
            return false;
        };
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.connected > 0 || clients.idle_since.elapsed() < after {
            return false;
        }
        let pooled: BTreeSet<String> = self.pool.warm_names().into_iter().collect();
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|name| pooled.contains(name))
    }
}

/// Counts a connected client while it lives (from its accept until what
/// it owned is gone).
struct ClientGuard(Arc<Daemon>);

impl ClientGuard {
    fn new(d: &Arc<Daemon>) -> Self {
        d.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connected += 1;
        ClientGuard(d.clone())
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut c = self.0.clients.lock().unwrap_or_else(|p| p.into_inner());
        c.connected = c.connected.saturating_sub(1);
        c.idle_since = Instant::now();
    }
}

/// Binds the socket (0600, in a 0700 directory) and serves until SIGTERM
/// or SIGINT; then stops every session it created and removes the socket.
pub fn serve(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let listener = bind(&cfg.socket)?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, term.clone());
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", &cfg.socket, e))?;
    crate::harden::harden_daemon().map_err(DaemonError::Seccomp)?;
    eprintln!("nook serve: listening on {}", cfg.socket.display());
    let socket = cfg.socket.clone();
    let d = Arc::new(Daemon {
        pool: Pool::default(),
        desktops: Desktops::default(),
        cfg,
        created: Mutex::new(BTreeSet::new()),
        seq: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        sidecar: Mutex::new(HashMap::new()),
        sidecar_start: Mutex::new(()),
        clients: Mutex::new(Clients {
            connected: 0,
            idle_since: Instant::now(),
        }),
    });
    while !term.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let client = ClientGuard::new(&d);
                let spawned = std::thread::Builder::new()
                    .name("nook-serve-client".into())
                    .spawn(move || serve_connection(client, conn));
                if let Err(e) = spawned {
                    tracing::warn!("nook serve: cannot start a client thread: {e}");
                }
            }
            // Idle only with no connection waiting to be accepted: a
            // client that connected as the time ran out is served.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if d.idle_expired() {
                    eprintln!("nook serve: no client for the --idle-exit time");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("nook serve: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    eprintln!("nook serve: stopping the sessions it created");
    d.stopping.store(true, Ordering::Relaxed);
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    shutdown_sessions(&d);
    Ok(())
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> DaemonError {
    DaemonError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        create_private_dir(dir).map_err(DaemonError::Dir)?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| io_err("inspect", dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        // The socket itself is 0600; a wider directory lets others see it.
        tracing::warn!(
            "nook serve: {} is not private (mode {:o}); the socket itself is 0600",
            dir.display(),
            mode & 0o777
        );
    }
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::InUse(socket.to_path_buf()));
        }
        let _ = std::fs::remove_file(socket);
    }
    let listener = UnixListener::bind(socket).map_err(|e| io_err("bind", socket, e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod", socket, e))?;
    Ok(listener)
}

/// Stops every session the daemon created and its pool's, in parallel.
fn shutdown_sessions(d: &Arc<Daemon>) {
    let mut names: Vec<String> = d
        .created
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    names.extend(d.pool.drain());
    names.sort();
    names.dedup();
    destroy_all(d, names);
}

/// Stops and removes sessions `names` in parallel; returns when all are gone.
pub(crate) fn destroy_all(d: &Arc<Daemon>, names: Vec<String>) {
    let threads: Vec<_> = names
        .into_iter()
        .map(|name| {
            let d = d.clone();
            std::thread::spawn(move || d.destroy(&name))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Whether a first line speaks the sidecar protocol (an object with `op`).
fn is_sidecar_line(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("op").map(|_| ()))
        .is_some()
}

fn serve_connection(client: ClientGuard, conn: UnixStream) {
    let d = &client.0;
    let _ = conn.set_nonblocking(false);
    let Ok(w) = conn.try_clone() else { return };
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    let first = match read_bounded_line(&mut r, MAX_LINE) {
        Ok(LineRead::Eof) | Err(_) => return,
        Ok(first) => first,
    };
    let sidecar = matches!(&first, LineRead::Line(l) if is_sidecar_line(l));
    let lines = Lines::new(first, r);
    if sidecar {
        super::sidecar::serve(d, lines, w);
    } else {
        super::conn::serve(d, lines, w);
    }
}

/// A connection's lines, its already-read first line first.
pub(crate) struct Lines {
    first: Option<LineRead>,
    r: BufReader<UnixStream>,
}

impl Lines {
    pub(crate) fn new(first: LineRead, r: BufReader<UnixStream>) -> Lines {
        Lines {
            first: Some(first),
            r,
        }
    }

    /// The next line, or `None` at the end of the stream or on an error.
    pub(crate) fn next_line(&mut self) -> Option<LineRead> {
        let read = match self.first.take() {
            Some(l) => l,
            None => read_bounded_line(&mut self.r, MAX_LINE).ok()?,
        };
        (read != LineRead::Eof).then_some(read)
    }
}

/// Writes `line` to a shared connection; false once the client is gone.
pub(crate) fn write_line(w: &Mutex<UnixStream>, line: &[u8]) -> bool {
    w.lock()
        .unwrap_or_else(|p| p.into_inner())
        .write_all(line)
        .is_ok()
}
