//! The session host: the detached process that owns one session's [`Vm`]
//! and serves its socket. One per session, so a crash takes only its own
//! session down; its VM dies with it (the engine's process is tied to it).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nook::{EngineKind, Vm, VmConfig};

use crate::error::SessionError;
use crate::exec::{exec_error_reply, serve_attached, spawn_child};
use crate::state::{now_unix, SessionDir, SessionPhase, SessionSpec, SessionState};
use crate::wire::{
    to_line, SessionErrorCode, SessionReply, SessionRequest, MAX_LINE, SESSION_PROTOCOL_VERSION,
};

/// How long a clean stop waits for the guest to power off.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a snapshot request waits for running commands to end.
const SNAPSHOT_QUIET_WAIT: Duration = Duration::from_secs(2);
/// How often the host checks its VM, limits and stop requests.
const TICK: Duration = Duration::from_millis(100);
/// How often the state file's memory statistics are refreshed.
const MEMORY_REFRESH: Duration = Duration::from_secs(2);

/// State shared by the host's threads.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) dir: SessionDir,
    /// Variables every command starts with.
    pub(crate) env: Vec<(String, String)>,
    /// `None` once the session is stopping.
    pub(crate) vm: RwLock<Option<Vm>>,
    /// Attached execs and live detached processes.
    pub(crate) busy: AtomicUsize,
    pub(crate) last_activity: Mutex<Instant>,
    pub(crate) stop: AtomicBool,
    /// Detached processes by guest pid.
    pub(crate) detached: Mutex<HashMap<u32, crate::procs::Detached>>,
}

impl Host {
    pub(crate) fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

/// The host process's main: boots the session in `dir`, serves it, and
/// returns its exit code once the session ended.
pub fn run_host(dir: &Path) -> i32 {
    // Leave the starting CLI's session and process group: its terminal's
    // signals must not reach this process.
    let _ = rustix::process::setsid();
    if let Err(e) = crate::harden::harden_process(nook_seccomp::ThreadFilter::SessionHost) {
        eprintln!("nook session host: {e}");
        return 1;
    }
    let sd = SessionDir(dir.to_path_buf());
    let spec = match sd.read_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nook session host: {e}");
            return 1;
        }
    };
    let mut state = SessionState {
        name: spec.name.clone(),
        engine: spec.engine.clone(),
        image: spec.image.clone(),
        created_unix: now_unix(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        pid: std::process::id(),
        state: SessionPhase::Starting,
        exit_reason: None,
        published: Vec::new(),
        net: None,
        memory: None,
    };
    let _ = sd.write_state(&state);
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, term.clone());
    }
    let reason = match serve(&sd, &spec, &mut state, &term) {
        Ok(reason) => reason,
        Err(e) => format!("failed: {}", nook::error_chain(&e)),
    };
    let _ = std::fs::remove_file(sd.socket_path());
    tracing::info!("nook session {}: exited: {reason}", spec.name);
    state.state = SessionPhase::Exited;
    state.exit_reason = Some(reason);
    let _ = sd.write_state(&state);
    0
}

/// The VM configuration a spec asks for.
fn vm_config(spec: &SessionSpec, home: &Path) -> Result<VmConfig, SessionError> {
    let engine: EngineKind = spec.engine.parse().unwrap_or_default();
    let mut cfg = VmConfig {
        engine,
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        boot_timeout: Duration::from_secs(spec.boot_timeout_s),
        progress: false,
        ..VmConfig::default()
    };
    cfg.home = home.to_path_buf();
    cfg.holder = format!("session {}", spec.name);
    if spec.kernel.is_some() {
        cfg.kernel = spec.kernel.clone();
    }
    if spec.agent.is_some() {
        cfg.agent = spec.agent.clone();
    }
    cfg.template = cfg.template && spec.template;
    cfg.net = spec.net.clone();
    cfg.balloon = spec.balloon;
    cfg.shares = spec
        .shares
        .iter()
        .map(|m| nook::ShareConfig {
            host_dir: m.host_path.clone(),
            guest_path: m.guest_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    cfg.volumes = spec
        .volumes
        .iter()
        .map(|m| nook::VolumeMount {
            disk: m.host_path.clone(),
            guest_path: m.guest_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    if let Some(reference) = &spec.image {
        let image_err = |source| SessionError::Image {
            reference: reference.clone(),
            source: Box::new(source),
        };
        let store = nook::ImageStore::open(&home.join("images")).map_err(image_err)?;
        let info =
            store
                .get(reference)
                .map_err(image_err)?
                .ok_or_else(|| SessionError::StartFailed {
                    name: spec.name.clone(),
                    reason: format!("image `{reference}` is not in the store"),
                })?;
        cfg.image = Some(nook::ImageRoot::new(&info));
    }
    Ok(cfg)
}

/// Boots, serves until a stop, a limit or the VM's death; returns why it ended.
fn serve(
    sd: &SessionDir,
    spec: &SessionSpec,
    state: &mut SessionState,
    term: &AtomicBool,
) -> Result<String, SessionError> {
    let home =
        sd.0.parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"))
            .to_path_buf();
    let cfg = vm_config(spec, &home)?;
    let vm = match &spec.snapshot {
        Some(snapshot) => Vm::restore(snapshot, &cfg),
        None => Vm::start(cfg),
    }
    .map_err(|e| SessionError::Vm(Box::new(e)))?;
    state.engine = vm.engine().id().label().to_string();
    state.published = vm.published_ports().to_vec();
    state.net = vm.net_stats();
    let sock = sd.socket_path();
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| SessionError::io("bind", &sock, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SessionError::io("chmod", &sock, e))?;
    }
    let host = Arc::new(Host {
        name: spec.name.clone(),
        dir: sd.clone(),
        env: spec.env.clone(),
        vm: RwLock::new(Some(vm)),
        busy: AtomicUsize::new(0),
        last_activity: Mutex::new(Instant::now()),
        stop: AtomicBool::new(false),
        detached: Mutex::new(HashMap::new()),
    });
    {
        let host = host.clone();
        std::thread::Builder::new()
            .name("nook-accept".into())
            .spawn(move || accept_loop(listener, host))
            .map_err(|e| SessionError::io("spawn a thread for", &sock, e))?;
    }
    state.state = SessionPhase::Running;
    sd.write_state(state)?;
    let started = Instant::now();
    let mut memory_read = None;
    let idle = spec.idle_timeout_s.map(Duration::from_secs);
    let max = spec.max_duration_s.map(Duration::from_secs);
    let reason = loop {
        std::thread::sleep(TICK);
        if host.stop.load(Ordering::Relaxed) {
            break "stopped".to_string();
        }
        if term.load(Ordering::Relaxed) {
            break "the session host was terminated".to_string();
        }
        let exited = host
            .vm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Vm::exited);
        if let Some(why) = exited {
            break format!("the VM died: {why}");
        }
        refresh_net_stats(&host, sd, state);
        if memory_read.is_none_or(|t: Instant| t.elapsed() >= MEMORY_REFRESH) {
            refresh_memory_stats(&host, sd, state);
            memory_read = Some(Instant::now());
        }
        if let Some(max) = max {
            if started.elapsed() >= max {
                break format!("max duration ({} s) reached", max.as_secs());
            }
        }
        if let Some(idle) = idle {
            let quiet = host
                .last_activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if host.busy.load(Ordering::Relaxed) == 0 && quiet >= idle {
                break format!("idle timeout ({} s)", idle.as_secs());
            }
        }
    };
    let vm = host.vm.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(vm) = vm {
        if vm.exited().is_none() {
            // The guest syncs and unmounts its volumes before powering off.
            let _ = vm.shutdown(STOP_GRACE);
        }
    }
    Ok(reason)
}

/// Writes the state again when the VM's network counters moved, so
/// `nook ps --json` shows current refusals.
fn refresh_net_stats(host: &Host, sd: &SessionDir, state: &mut SessionState) {
    let stats = host
        .vm
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(Vm::net_stats);
    if stats.is_some() && stats != state.net {
        state.net = stats;
        let _ = sd.write_state(state);
    }
}

/// Writes the state again when the balloon or the VM's memory changed, so
/// `nook ps` shows them.
fn refresh_memory_stats(host: &Host, sd: &SessionDir, state: &mut SessionState) {
    let stats = host
        .vm
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .filter(|vm| vm.balloon().is_some())
        .and_then(|vm| vm.memory_stats().ok())
        .map(Box::new);
    if stats.is_some() && stats != state.memory {
        state.memory = stats;
        let _ = sd.write_state(state);
    }
}

/// Answers `balloon_set` and `memory_stats`.
fn serve_memory(host: &Host, req: &SessionRequest) -> SessionReply {
    let vm = host.vm.read().unwrap_or_else(|p| p.into_inner());
    let Some(vm) = vm.as_ref() else {
        return error_reply(SessionErrorCode::Vm, "the session is stopping");
    };
    let result = match req {
        SessionRequest::BalloonSet { balloon_mib } => {
            vm.set_balloon(*balloon_mib).map(|()| SessionReply::Ok)
        }
        _ => vm
            .memory_stats()
            .map(|stats| SessionReply::MemoryStats { stats }),
    };
    result.unwrap_or_else(|e| {
        let code = match e {
            nook::VmError::NoBalloon | nook::VmError::BalloonTooLarge { .. } => {
                SessionErrorCode::BadRequest
            }
            _ => SessionErrorCode::Vm,
        };
        error_reply(code, nook::error_chain(&e))
    })
}

fn accept_loop(listener: UnixListener, host: Arc<Host>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let host = host.clone();
        let _ = std::thread::Builder::new()
            .name("nook-client".into())
            .spawn(move || {
                if let Err(e) = serve_client(conn, &host) {
                    tracing::debug!("nook session {}: client: {e}", host.name);
                }
            });
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub(crate) fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = <&mut R as std::io::Read>::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long",
        ));
    }
    Ok(Some(line))
}

pub(crate) fn send(w: &mut impl Write, reply: &SessionReply) -> std::io::Result<()> {
    w.write_all(&to_line(reply))
}

fn error_reply(code: SessionErrorCode, message: impl Into<String>) -> SessionReply {
    SessionReply::Error {
        code,
        message: message.into(),
    }
}

/// Whether no command or transfer runs, waiting up to `limit` for that.
fn wait_quiet(host: &Host, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while host.busy.load(Ordering::Relaxed) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn serve_client(conn: UnixStream, host: &Arc<Host>) -> std::io::Result<()> {
    host.touch();
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let line = match read_line(&mut r) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) => {
            return send(
                &mut w,
                &error_reply(SessionErrorCode::BadRequest, e.to_string()),
            )
        }
    };
    let req: SessionRequest = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            return send(
                &mut w,
                &error_reply(SessionErrorCode::BadRequest, e.to_string()),
            )
        }
    };
    match req {
        SessionRequest::Hello => send(
            &mut w,
            &SessionReply::Hello {
                version: SESSION_PROTOCOL_VERSION,
                name: host.name.clone(),
            },
        ),
        SessionRequest::Stop => {
            host.stop.store(true, Ordering::Relaxed);
            send(&mut w, &SessionReply::Ok)
        }
        // A command that just ended may still count for a moment.
        SessionRequest::Snapshot { running: false, .. }
            if !wait_quiet(host, SNAPSHOT_QUIET_WAIT) =>
        {
            send(
            &mut w,
            &error_reply(
                SessionErrorCode::Vm,
                "a command or file transfer is running in the session: snapshot it once they ended",
            ),
        )
        }
        SessionRequest::Snapshot { path, .. } => {
            let result = host
                .vm
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|vm| vm.snapshot(&path));
            let reply = match result {
                Some(Ok(_)) => SessionReply::Ok,
                Some(Err(e)) => error_reply(SessionErrorCode::Vm, nook::error_chain(&e)),
                None => error_reply(SessionErrorCode::Vm, "the session is stopping"),
            };
            host.touch();
            send(&mut w, &reply)
        }
        SessionRequest::Logs { lines } => {
            let text = host
                .vm
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|vm| vm.console_tail(lines))
                .unwrap_or_default();
            send(&mut w, &SessionReply::Logs { text })
        }
        SessionRequest::BalloonSet { .. } | SessionRequest::MemoryStats => {
            send(&mut w, &serve_memory(host, &req))
        }
        SessionRequest::Signal { .. }
        | SessionRequest::ProcRead { .. }
        | SessionRequest::ProcStdin { .. }
        | SessionRequest::ProcWait { .. } => send(&mut w, &crate::procs::serve_proc(host, req)),
        SessionRequest::FileWrite { .. }
        | SessionRequest::FileRead { .. }
        | SessionRequest::FileStat { .. }
        | SessionRequest::FileList { .. }
        | SessionRequest::FileMkdir { .. }
        | SessionRequest::FileRemove { .. }
        | SessionRequest::FileSymlink { .. } => {
            host.busy.fetch_add(1, Ordering::Relaxed);
            let result = crate::files::serve_file(host, req, &mut r, &mut w);
            host.busy.fetch_sub(1, Ordering::Relaxed);
            host.touch();
            result
        }
        SessionRequest::Desktop(req) => crate::desktop::serve_desktop(host, &req, &mut w),
        SessionRequest::Exec(spec) => {
            let child = spawn_child(host, &spec);
            let child = match child {
                Ok(c) => c,
                Err(e) => return send(&mut w, &exec_error_reply(&e)),
            };
            if spec.detach {
                crate::procs::detach(host, child, spec.service, &mut w)
            } else {
                host.busy.fetch_add(1, Ordering::Relaxed);
                let result = serve_attached(child, r, &mut w);
                host.busy.fetch_sub(1, Ordering::Relaxed);
                host.touch();
                result
            }
        }
    }
}
