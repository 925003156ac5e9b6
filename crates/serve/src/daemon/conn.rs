//! One client of nook's own daemon protocol: requests in, replies and
//! events out, several requests in flight at once. What the client owns
//! (attached execs, uploads, sessions created without `keep`) ends when it
//! disconnects.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use super::lines::LineRead;
use super::proto::{
    parse_request, salvage_id, CreateSpec, ErrorCode, ExecRequest, Reply, ReplyBody, Request,
    RequestBody, RequestId, DAEMON_PROTOCOL_VERSION, MAX_LINE,
};
use super::server::{destroy_all, write_line, Daemon, Lines};
use crate::error::SessionError;
use crate::wire::{decode_bytes, encode_bytes, to_line, SessionErrorCode, SessionReply};
use crate::{ExecInputSender, SessionClient, SessionSpec, SpecMount};

/// A connection's replies: one writer shared by the threads answering it.
#[derive(Debug, Clone)]
pub(crate) struct Out(Arc<Mutex<UnixStream>>);

impl Out {
    /// Sends one reply; false once the client is gone.
    pub(crate) fn send(&self, id: &RequestId, body: ReplyBody) -> bool {
        write_line(
            &self.0,
            &to_line(&Reply {
                id: id.clone(),
                body,
            }),
        )
    }
    pub(crate) fn error(&self, id: &RequestId, code: ErrorCode, message: impl Into<String>) {
        self.send(
            id,
            ReplyBody::Error {
                code,
                message: message.into(),
            },
        );
    }
    pub(crate) fn session_error(&self, id: &RequestId, e: &SessionError) {
        let (code, message) = error_of(e);
        self.send(id, ReplyBody::Error { code, message });
    }
}

/// What a connection owns.
#[derive(Debug, Default)]
pub(crate) struct Owned {
    /// Attached execs by request id (their stdin, signals, resizes).
    execs: Mutex<HashMap<RequestId, ExecInputSender>>,
    /// Chunked file writes in progress, by the `file_write` request's id.
    pub(crate) uploads: Mutex<HashMap<RequestId, SyncSender<Vec<u8>>>>,
    /// Sessions created without `keep`.
    pub(crate) sessions: Mutex<Vec<String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stable code and the message for a library error.
pub(crate) fn error_of(e: &SessionError) -> (ErrorCode, String) {
    let code = match e {
        SessionError::BadName(_) => ErrorCode::BadRequest,
        SessionError::NoSuchSession(_) => ErrorCode::NoSession,
        SessionError::Exists(_) => ErrorCode::SessionExists,
        SessionError::Running(_) | SessionError::NotRunning(_) | SessionError::NotADesktop(_) => {
            ErrorCode::SessionState
        }
        SessionError::Io { .. } | SessionError::Corrupt { .. } => ErrorCode::Io,
        SessionError::Image { .. } | SessionError::ImageBuild { .. } | SessionError::NoImage(_) => {
            ErrorCode::Unavailable
        }
        SessionError::Refused { code, .. } => match code {
            SessionErrorCode::BadRequest => ErrorCode::BadRequest,
            SessionErrorCode::NotFound => ErrorCode::NotFound,
            SessionErrorCode::NotExecutable => ErrorCode::NotExecutable,
            SessionErrorCode::NoProcess => ErrorCode::NoProcess,
            SessionErrorCode::NotADirectory => ErrorCode::NotADirectory,
            SessionErrorCode::IsADirectory => ErrorCode::IsADirectory,
            SessionErrorCode::PermissionDenied => ErrorCode::PermissionDenied,
            SessionErrorCode::NotEmpty => ErrorCode::NotEmpty,
            SessionErrorCode::Io => ErrorCode::Io,
            // A desktop session without its display: nothing to act on.
            SessionErrorCode::NoDisplay => ErrorCode::Unavailable,
            SessionErrorCode::Vm | SessionErrorCode::DesktopFailed | SessionErrorCode::Other => {
                ErrorCode::Vm
            }
        },
        SessionError::StartFailed { .. }
        | SessionError::DisplayFailed { .. }
        | SessionError::ViewFailed(_)
        | SessionError::Protocol(_)
        | SessionError::Connection(_)
        | SessionError::Vm(_) => ErrorCode::Vm,
    };
    (code, nook::error_chain(e))
}

/// Serves a client whose first line is `first`, until it disconnects.
pub(crate) fn serve(d: &Arc<Daemon>, mut lines: Lines, w: UnixStream) {
    let out = Out(Arc::new(Mutex::new(w)));
    let owned = Arc::new(Owned::default());
    while let Some(read) = lines.next_line() {
        match read {
            LineRead::Eof => break,
            LineRead::TooLong(n) => out.error(
                &RequestId::Text(String::new()),
                ErrorCode::LineTooLong,
                format!("a line of {n} bytes is over the limit of {MAX_LINE}: it was discarded"),
            ),
            LineRead::Line(line) => match parse_request(&line) {
                Ok(req) => dispatch(d, &out, &owned, req),
                Err(e) => out.error(
                    &salvage_id(&line).unwrap_or(RequestId::Text(String::new())),
                    e.code(),
                    e.to_string(),
                ),
            },
        }
    }
    disconnect(d, &owned);
}

/// The client left: kill its attached execs, abandon its uploads, and stop
/// the sessions it created without `keep`.
fn disconnect(d: &Arc<Daemon>, owned: &Owned) {
    for (_, exec) in lock(&owned.execs).drain() {
        exec.hang_up();
    }
    lock(&owned.uploads).clear();
    let sessions: Vec<String> = lock(&owned.sessions).drain(..).collect();
    destroy_all(d, sessions);
}

/// Runs `f` on its own thread (requests that wait on a guest or a boot).
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("nook-serve-req".into())
        .spawn(f)
    {
        tracing::warn!("nook serve: cannot start a request thread: {e}");
    }
}

fn client(d: &Daemon, session: &str) -> Result<SessionClient, SessionError> {
    SessionClient::open(&d.cfg.home, session)
}

fn dispatch(d: &Arc<Daemon>, out: &Out, owned: &Arc<Owned>, req: Request) {
    let Request { id, body } = req;
    match body {
        RequestBody::Handshake { version, .. } => {
            if version != DAEMON_PROTOCOL_VERSION {
                return out.error(
                    &id,
                    ErrorCode::VersionMismatch,
                    format!("this daemon speaks protocol version {DAEMON_PROTOCOL_VERSION}, not {version}"),
                );
            }
            out.send(
                &id,
                ReplyBody::Hello {
                    version: DAEMON_PROTOCOL_VERSION,
                    server: "nook".into(),
                    server_version: env!("CARGO_PKG_VERSION").into(),
                },
            );
        }
        RequestBody::SessionCreate(spec) => {
            let (d, out, owned) = (d.clone(), out.clone(), owned.clone());
            spawn(move || match create_session(&d, &spec, None) {
                Ok(st) => {
                    if !spec.keep {
                        lock(&owned.sessions).push(st.name.clone());
                    }
                    out.send(&id, ReplyBody::Session { session: st });
                }
                Err(e) => out.session_error(&id, &e),
            });
        }
        RequestBody::SessionList => match crate::list_sessions(&d.cfg.home) {
            Ok(sessions) => {
                out.send(&id, ReplyBody::Sessions { sessions });
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::SessionInspect { session } => match inspect(d, &session) {
            Ok(st) => {
                out.send(&id, ReplyBody::Session { session: st });
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::SessionStop { session } => {
            let (d, out) = (d.clone(), out.clone());
            spawn(move || match crate::stop(&d.cfg.home, &session) {
                Ok(st) => {
                    d.desktops.forget(&session);
                    out.send(&id, ReplyBody::Session { session: st });
                }
                Err(e) => out.session_error(&id, &e),
            });
        }
        RequestBody::SessionRemove { session, force } => {
            let (d, out, owned) = (d.clone(), out.clone(), owned.clone());
            spawn(move || match crate::remove(&d.cfg.home, &session, force) {
                Ok(()) => {
                    lock(&d.created).remove(&session);
                    d.desktops.forget(&session);
                    lock(&owned.sessions).retain(|n| n != &session);
                    out.send(&id, ReplyBody::Ok);
                }
                Err(e) => out.session_error(&id, &e),
            });
        }
        RequestBody::Exec(req) => exec(d, out, owned, id, req),
        RequestBody::ExecStdin { exec, data } => {
            let Ok(bytes) = decode_bytes(&data) else {
                return out.error(&id, ErrorCode::BadRequest, "`data` is not base64");
            };
            exec_input(out, owned, &id, &exec, |s| s.stdin(&bytes));
        }
        RequestBody::ExecStdinClose { exec } => {
            exec_input(out, owned, &id, &exec, ExecInputSender::close_stdin);
        }
        RequestBody::ExecSignal { exec, signal } => {
            exec_input(out, owned, &id, &exec, |s| s.signal(signal));
        }
        RequestBody::ExecResize { exec, rows, cols } => {
            exec_input(out, owned, &id, &exec, |s| s.resize(rows, cols));
        }
        body @ (RequestBody::ProcRead { .. }
        | RequestBody::ProcStdin { .. }
        | RequestBody::ProcSignal { .. }
        | RequestBody::ProcWait { .. }) => proc_request(d, out, id, body),
        RequestBody::Snapshot { session, name } => {
            let (d, out) = (d.clone(), out.clone());
            spawn(move || snapshot(&d, &out, &id, &session, &name));
        }
        RequestBody::BalloonSet {
            session,
            balloon_mib,
        } => match client(d, &session).and_then(|c| c.set_balloon(balloon_mib)) {
            Ok(()) => {
                out.send(&id, ReplyBody::Ok);
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::MemoryStats { session } => {
            match client(d, &session).and_then(|c| c.memory_stats()) {
                Ok(stats) => {
                    out.send(&id, ReplyBody::MemoryStats { stats });
                }
                Err(e) => out.session_error(&id, &e),
            }
        }
        RequestBody::PoolAcquire { spec } => {
            let (d, out, owned) = (d.clone(), out.clone(), owned.clone());
            spawn(move || match super::pool::acquire(&d, &spec) {
                Ok(st) => {
                    if !spec.keep {
                        // Like a created session: it ends with this client.
                        lock(&owned.sessions).push(st.name.clone());
                    }
                    out.send(&id, ReplyBody::Session { session: st });
                }
                Err(e) => out.session_error(&id, &e),
            });
        }
        RequestBody::PoolRelease { session } => {
            let (d, out, owned) = (d.clone(), out.clone(), owned.clone());
            spawn(move || {
                if super::pool::release(&d, &session) {
                    lock(&owned.sessions).retain(|n| n != &session);
                    out.send(&id, ReplyBody::Ok);
                } else {
                    out.error(
                        &id,
                        ErrorCode::NoSession,
                        format!("session `{session}` was not acquired from the pool"),
                    );
                }
            });
        }
        body @ (RequestBody::FileWrite { .. }
        | RequestBody::FileWriteChunk { .. }
        | RequestBody::FileRead { .. }
        | RequestBody::FileList { .. }
        | RequestBody::FileStat { .. }
        | RequestBody::FileMkdir { .. }
        | RequestBody::FileRemove { .. }) => super::files::serve(d, out, owned, id, body),
        RequestBody::DesktopCreate(spec) => super::desktop::create(d, out, owned, id, spec),
        RequestBody::DesktopAction(req) => super::desktop::act(d, out, id, req),
    }
}

/// Answers a request about a background process.
fn proc_request(d: &Arc<Daemon>, out: &Out, id: RequestId, body: RequestBody) {
    match body {
        RequestBody::ProcRead {
            session,
            pid,
            offset,
            max_bytes,
        } => match client(d, &session).and_then(|c| c.proc_read(pid, offset, max_bytes)) {
            Ok(p) => {
                out.send(
                    &id,
                    ReplyBody::ProcOutput {
                        data: encode_bytes(&p.data),
                        next_offset: p.next_offset,
                        truncated: p.truncated,
                        exit: p.exit,
                    },
                );
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::ProcStdin {
            session,
            pid,
            data,
            close,
        } => {
            let Ok(bytes) = decode_bytes(&data) else {
                return out.error(&id, ErrorCode::BadRequest, "`data` is not base64");
            };
            let (d, out) = (d.clone(), out.clone());
            spawn(move || {
                match client(&d, &session).and_then(|c| c.proc_stdin(pid, &bytes, close)) {
                    Ok(()) => {
                        out.send(&id, ReplyBody::Ok);
                    }
                    Err(e) => out.session_error(&id, &e),
                }
            });
        }
        RequestBody::ProcSignal {
            session,
            pid,
            signal,
        } => match client(d, &session).and_then(|c| c.signal(pid, signal)) {
            Ok(()) => {
                out.send(&id, ReplyBody::Ok);
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::ProcWait { session, pid } => {
            let (d, out) = (d.clone(), out.clone());
            spawn(
                move || match client(&d, &session).and_then(|c| c.proc_wait(pid)) {
                    Ok(e) => {
                        out.send(
                            &id,
                            ReplyBody::Exit {
                                code: e.code,
                                signal: e.signal,
                                timed_out: e.timed_out,
                            },
                        );
                    }
                    Err(e) => out.session_error(&id, &e),
                },
            );
        }
        other => out.error(
            &id,
            ErrorCode::BadRequest,
            format!("not a process request: {other:?}"),
        ),
    }
}

fn inspect(d: &Daemon, session: &str) -> Result<crate::SessionState, SessionError> {
    crate::state::SessionDir::new(&d.cfg.home, session)?
        .read_state()
        .map_err(|_| SessionError::NoSuchSession(session.to_string()))
}

fn snapshot(d: &Daemon, out: &Out, id: &RequestId, session: &str, name: &str) {
    let path = match nook::named_snapshot(&d.cfg.home, name) {
        Ok(p) => p,
        Err(e) => return out.error(id, ErrorCode::BadRequest, nook::error_chain(&e)),
    };
    match client(d, session).and_then(|c| c.snapshot(&path)) {
        Ok(()) => {
            out.send(
                id,
                ReplyBody::Snapshot {
                    name: name.to_string(),
                    path,
                },
            );
        }
        Err(e) => out.session_error(id, &e),
    }
}

fn exec_input(
    out: &Out,
    owned: &Owned,
    id: &RequestId,
    exec: &RequestId,
    f: impl FnOnce(&mut ExecInputSender) -> std::io::Result<()>,
) {
    let result = lock(&owned.execs).get_mut(exec).map(f);
    match result {
        Some(Ok(())) => {
            out.send(id, ReplyBody::Ok);
        }
        Some(Err(e)) => out.error(id, ErrorCode::Vm, format!("exec {exec:?}: {e}")),
        None => out.error(
            id,
            ErrorCode::NoExec,
            format!("no running attached exec {exec:?} on this connection"),
        ),
    }
}

/// Starts a command and streams its events from a thread of their own.
fn exec(d: &Arc<Daemon>, out: &Out, owned: &Arc<Owned>, id: RequestId, req: ExecRequest) {
    if lock(&owned.execs).contains_key(&id) {
        return out.error(
            &id,
            ErrorCode::BadRequest,
            "an exec with this id is running",
        );
    }
    let detach = req.spec.detach;
    let mut remote = match client(d, &req.session).and_then(|c| c.exec(req.spec)) {
        Ok(r) => r,
        Err(e) => return out.session_error(&id, &e),
    };
    out.send(&id, ReplyBody::Started { pid: remote.pid });
    if detach {
        return;
    }
    match remote.input.try_clone() {
        Ok(input) => {
            lock(&owned.execs).insert(id.clone(), input);
        }
        Err(e) => return out.error(&id, ErrorCode::Vm, format!("exec input: {e}")),
    }
    let (out, owned) = (out.clone(), owned.clone());
    spawn(move || {
        let last = loop {
            let body = match remote.next_reply() {
                Ok(Some(SessionReply::Stdout { data })) => ReplyBody::Stdout { data },
                Ok(Some(SessionReply::Stderr { data })) => ReplyBody::Stderr { data },
                Ok(Some(SessionReply::Exit {
                    code,
                    signal,
                    timed_out,
                })) => {
                    break ReplyBody::Exit {
                        code,
                        signal,
                        timed_out,
                    }
                }
                Ok(Some(SessionReply::Error { code, message })) => {
                    let (code, _) = error_of(&SessionError::Refused {
                        code,
                        message: String::new(),
                    });
                    break ReplyBody::Error { code, message };
                }
                Ok(other) => {
                    break ReplyBody::Error {
                        code: ErrorCode::Vm,
                        message: format!(
                            "the session ended the command without an exit: {other:?}"
                        ),
                    }
                }
                Err(e) => {
                    let (code, message) = error_of(&e);
                    break ReplyBody::Error { code, message };
                }
            };
            if !out.send(&id, body) {
                // The client is gone: hanging up kills the command.
                remote.input.hang_up();
                lock(&owned.execs).remove(&id);
                return;
            }
        };
        // Forget the exec before its last event: the client may reuse the id.
        lock(&owned.execs).remove(&id);
        out.send(&id, last);
    });
}

/// The session spec a create request asks for.
fn session_spec(d: &Daemon, c: &CreateSpec, name: String) -> Result<SessionSpec, SessionError> {
    let defaults = nook::VmConfig::default();
    let bad = |reason: String| SessionError::StartFailed {
        name: name.clone(),
        reason,
    };
    let mut spec = SessionSpec {
        name: name.clone(),
        image: c.image.clone(),
        engine: d.cfg.engine.clone(),
        memory_mib: c.memory_mib.unwrap_or(defaults.memory_mib),
        vcpus: c.cpus.unwrap_or(defaults.vcpus),
        kernel: defaults.kernel.clone(),
        agent: defaults.agent.clone(),
        boot_timeout_s: defaults.boot_timeout.as_secs(),
        template: defaults.template,
        idle_timeout_s: c.idle_timeout_s,
        max_duration_s: None,
        net: c.net.then(nook::NetConfig::default),
        env: c.env.clone(),
        shares: c
            .shares
            .iter()
            .map(|m| SpecMount {
                host_path: m.source.clone().into(),
                guest_path: m.guest_path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        volumes: Vec::new(),
        snapshot: None,
        balloon: c.balloon,
    };
    if let Some(reference) = &c.image {
        let store = nook::ImageStore::open(&d.cfg.home.join("images")).map_err(|source| {
            SessionError::Image {
                reference: reference.clone(),
                source: Box::new(source),
            }
        })?;
        let found = store.get(reference).map_err(|source| SessionError::Image {
            reference: reference.clone(),
            source: Box::new(source),
        })?;
        if found.is_none() {
            return Err(SessionError::NoImage(reference.clone()));
        }
    }
    for v in &c.volumes {
        let disk = if v.source.contains('/') {
            v.source.clone().into()
        } else {
            let store = nook::VolumeStore::in_home(&d.cfg.home)
                .map_err(|e| bad(format!("volume store: {e}")))?;
            store
                .ensure(&v.source, 1 << 30)
                .map_err(|e| bad(format!("volume `{}`: {e}", v.source)))?
                .path
        };
        spec.volumes.push(SpecMount {
            host_path: disk,
            guest_path: v.guest_path.clone(),
            read_only: v.read_only,
        });
    }
    if let Some(snap) = &c.snapshot {
        let s = nook::named_snapshot(&d.cfg.home, snap)
            .and_then(|p| nook::Snapshot::open(&p))
            .map_err(|e| bad(format!("snapshot `{snap}`: {}", nook::error_chain(&e))))?;
        spec = spec.restoring(&s);
    }
    Ok(spec)
}

/// Boots a session for `c` (named `name`, or a fresh `d…` name); it
/// counts as created by the daemon.
pub(crate) fn create_session(
    d: &Daemon,
    c: &CreateSpec,
    name: Option<String>,
) -> Result<crate::SessionState, SessionError> {
    create_session_with(d, c, name, crate::start)
}

/// Like [`create_session`], the session started by `start` (`crate::start`,
/// or one that also starts a display); what `start` returns is returned.
pub(crate) fn create_session_with<T>(
    d: &Daemon,
    c: &CreateSpec,
    name: Option<String>,
    start: impl FnOnce(&std::path::Path, &SessionSpec, &std::path::Path) -> Result<T, SessionError>,
) -> Result<T, SessionError> {
    let name = name
        .or_else(|| c.name.clone())
        .unwrap_or_else(|| d.new_name("d"));
    crate::validate_name(&name)?;
    let spec = session_spec(d, c, name.clone())?;
    lock(&d.created).insert(name.clone());
    match start(&d.cfg.home, &spec, &d.cfg.exe) {
        Ok(started) => {
            if d.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                // The daemon is stopping: this one came too late.
                d.destroy(&name);
                return Err(SessionError::NotRunning(name));
            }
            Ok(started)
        }
        Err(e) => {
            if !matches!(e, SessionError::Exists(_)) {
                d.destroy(&name);
            } else {
                lock(&d.created).remove(&name);
            }
            Err(e)
        }
    }
}
