//! Serving `devshell-vm` sidecar clients: each `session_id` is a nook
//! session (a VM) that persists across the client's connections until
//! `session_shutdown` or the daemon's exit. Commands' output goes to the
//! daemon's stderr, each line prefixed with the session id.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;

use super::conn::create_session;
use super::lines::LineRead;
use super::proto::{CreateSpec, MAX_LINE};
use super::server::{BetaImage, Daemon, Lines};
use super::sidecar_proto::{
    parse_sidecar_request, resolve_in_workspace, GuestFsCode, GuestFsOperation, SidecarErrorCode,
    SidecarReply, SidecarRequest, SyncDirection, SIDECAR_PROTOCOL_VERSION,
};
use crate::error::SessionError;
use crate::wire::{decode_bytes, to_line, ExecSpec, SessionErrorCode, SessionReply};
use crate::SessionClient;

/// Largest file `read_file` returns (its base64 must fit one line).
const MAX_READ_FILE: u64 = 12 * 1024 * 1024;

/// Guest memory of sidecar sessions (cargo builds need room).
const SIDECAR_MEMORY_MIB: u32 = 1024;

/// One sidecar session.
#[derive(Debug, Clone)]
pub(crate) struct SidecarSession {
    /// The nook session's name.
    name: String,
    staging: PathBuf,
    workspace: String,
}

fn error(code: SidecarErrorCode, message: impl Into<String>) -> SidecarReply {
    SidecarReply::Error {
        code,
        message: message.into(),
    }
}

/// Serves one sidecar connection, `first` being its first line.
pub(crate) fn serve(d: &Arc<Daemon>, mut lines: Lines, mut w: UnixStream) {
    while let Some(read) = lines.next_line() {
        let reply = match read {
            LineRead::Eof => return,
            LineRead::TooLong(n) => error(
                SidecarErrorCode::LineTooLong,
                format!("a line of {n} bytes is over the limit of {MAX_LINE}"),
            ),
            LineRead::Line(line) => match parse_sidecar_request(&line) {
                Ok(req) => handle(d, req),
                Err(reply) => reply,
            },
        };
        if w.write_all(&to_line(&reply)).is_err() {
            return;
        }
    }
}

fn session(d: &Daemon, id: &str) -> Result<(SidecarSession, SessionClient), SidecarReply> {
    let s = d
        .sidecar
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| {
            error(
                SidecarErrorCode::NoSession,
                format!("no session `{id}`: send session_start first"),
            )
        })?;
    let c = SessionClient::open(&d.cfg.home, &s.name)
        .map_err(|e| error(SidecarErrorCode::Vm, nook::error_chain(&e)))?;
    Ok((s, c))
}

fn handle(d: &Arc<Daemon>, req: SidecarRequest) -> SidecarReply {
    match req {
        SidecarRequest::Handshake { version } if version == SIDECAR_PROTOCOL_VERSION => {
            SidecarReply::HandshakeOk {
                version: SIDECAR_PROTOCOL_VERSION,
                server: "nook".into(),
                server_version: env!("CARGO_PKG_VERSION").into(),
            }
        }
        SidecarRequest::Handshake { version } => error(
            SidecarErrorCode::Parse,
            format!("this daemon speaks sidecar protocol version {SIDECAR_PROTOCOL_VERSION}, not {version}"),
        ),
        SidecarRequest::SessionStart {
            session_id,
            staging_dir,
            guest_workspace,
        } => session_start(d, session_id, staging_dir, guest_workspace),
        SidecarRequest::SyncRequest {
            session_id,
            direction,
            vfs_cwd_leaf,
        } => {
            let (s, c) = match session(d, &session_id) {
                Ok(x) => x,
                Err(reply) => return reply,
            };
            let result = match direction {
                SyncDirection::PushToGuest => {
                    super::sync::push(&c, &s.staging, &s.workspace, &vfs_cwd_leaf)
                }
                SyncDirection::PullFromGuest => {
                    super::sync::pull(&c, &s.staging, &s.workspace, &vfs_cwd_leaf)
                }
            };
            match result {
                Ok(()) => SidecarReply::SyncOk { session_id },
                Err(e) => error(SidecarErrorCode::Sync, nook::error_chain(&e)),
            }
        }
        SidecarRequest::Exec {
            session_id,
            guest_cwd,
            argv,
            env,
            timeout_ms,
        } => match session(d, &session_id) {
            Ok((s, c)) => exec(&s, &c, session_id, guest_cwd, argv, env, timeout_ms),
            Err(reply) => reply,
        },
        SidecarRequest::GuestFs {
            session_id,
            operation,
            guest_path,
            content_base64,
        } => match session(d, &session_id) {
            Ok((s, c)) => guest_fs(&s, &c, session_id, operation, &guest_path, content_base64),
            Err(reply) => reply,
        },
        SidecarRequest::SessionShutdown { session_id } => {
            let s = d
                .sidecar
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&session_id);
            match s {
                Some(s) => {
                    d.destroy(&s.name);
                    SidecarReply::ShutdownOk { session_id }
                }
                None => error(
                    SidecarErrorCode::NoSession,
                    format!("no session `{session_id}`"),
                ),
            }
        }
    }
}

/// A nook session name for a client's `session_id`.
fn session_name(d: &Daemon, id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{}-{clean}", d.new_name("sc"))
}

fn session_start(
    d: &Arc<Daemon>,
    session_id: String,
    staging_dir: String,
    guest_workspace: String,
) -> SidecarReply {
    let Some(workspace) = resolve_in_workspace("/", &guest_workspace) else {
        return error(SidecarErrorCode::Parse, "guest_workspace must be absolute");
    };
    let staging = PathBuf::from(&staging_dir);
    if !staging.is_absolute() {
        return error(
            SidecarErrorCode::Parse,
            "staging_dir must be an absolute host path",
        );
    }
    let _one_at_a_time = d.sidecar_start.lock().unwrap_or_else(|p| p.into_inner());
    let existing = d
        .sidecar
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&session_id)
        .cloned();
    if let Some(s) = existing {
        if SessionClient::open(&d.cfg.home, &s.name).is_ok() {
            let s = SidecarSession {
                staging,
                workspace: workspace.clone(),
                ..s
            };
            let c = SessionClient::open(&d.cfg.home, &s.name);
            if let Err(e) = c.and_then(|c| c.mkdir_all(&workspace, 0o755)) {
                return error(SidecarErrorCode::Vm, nook::error_chain(&e));
            }
            d.sidecar
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session_id.clone(), s);
            return SidecarReply::SessionOk { session_id };
        }
        // Its VM ended: boot a new one.
        d.destroy(&s.name);
    }
    let image = match beta_image(d) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let spec = CreateSpec {
        image,
        memory_mib: Some(SIDECAR_MEMORY_MIB),
        keep: true,
        ..CreateSpec::default()
    };
    let name = session_name(d, &session_id);
    eprintln!("nook serve: sidecar session {session_id}: starting {name}");
    let started = create_session(d, &spec, Some(name.clone()))
        .and_then(|_| SessionClient::open(&d.cfg.home, &name))
        .and_then(|c| c.mkdir_all(&workspace, 0o755));
    if let Err(e) = started {
        d.destroy(&name);
        return error(SidecarErrorCode::Vm, nook::error_chain(&e));
    }
    d.sidecar.lock().unwrap_or_else(|p| p.into_inner()).insert(
        session_id.clone(),
        SidecarSession {
            name,
            staging,
            workspace,
        },
    );
    SidecarReply::SessionOk { session_id }
}

/// The image sidecar sessions boot (`None`: the built-in root).
fn beta_image(d: &Daemon) -> Result<Option<String>, SidecarReply> {
    match &d.cfg.beta_image {
        BetaImage::Builtin => Ok(None),
        BetaImage::Image(reference) => Ok(Some(reference.clone())),
        BetaImage::RustToolchain => {
            // Built once (minutes, progress on the daemon's stderr), cached after.
            crate::toolchain::ensure_rust_image(&d.cfg.home, &mut std::io::stderr())
                .map(Some)
                .map_err(|e| {
                    error(
                        SidecarErrorCode::Vm,
                        format!(
                            "{}: or start `nook serve` with --beta-image REF",
                            nook::error_chain(&e)
                        ),
                    )
                })
        }
    }
}

/// Writes a command's output to the daemon's stderr, line by line, each
/// prefixed with the session id.
struct LogLines {
    prefix: String,
    partial: Vec<u8>,
}

impl LogLines {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.emit(&line);
        }
    }
    fn emit(&self, line: &[u8]) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(self.prefix.as_bytes());
        let _ = err.write_all(line);
        if !line.ends_with(b"\n") {
            let _ = err.write_all(b"\n");
        }
    }
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest);
        }
    }
}

fn exec(
    s: &SidecarSession,
    c: &SessionClient,
    session_id: String,
    guest_cwd: Option<String>,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
) -> SidecarReply {
    if argv.is_empty() {
        return error(SidecarErrorCode::Exec, "empty argv");
    }
    let cwd = guest_cwd.unwrap_or_else(|| s.workspace.clone());
    let Some(cwd) = resolve_in_workspace(&s.workspace, &cwd) else {
        return error(
            SidecarErrorCode::BadGuestCwd,
            format!("guest_cwd `{cwd}` is outside {}", s.workspace),
        );
    };
    let spec = ExecSpec {
        argv: argv.clone(),
        env: env.into_iter().collect(),
        cwd: Some(cwd),
        timeout_ms: timeout_ms.filter(|ms| *ms > 0),
        ..ExecSpec::default()
    };
    let mut log = LogLines {
        prefix: format!("[{session_id}] "),
        partial: Vec::new(),
    };
    eprintln!("nook serve: [{session_id}] exec {argv:?}");
    let mut remote = match c.exec(spec) {
        Ok(r) => r,
        Err(SessionError::Refused { code, message }) => {
            // As a shell would: 127 not found, 126 not executable.
            let exit_code = match code {
                SessionErrorCode::NotFound => 127,
                SessionErrorCode::NotExecutable => 126,
                _ => return error(SidecarErrorCode::Exec, message),
            };
            log.emit(format!("nook: {message}").as_bytes());
            return SidecarReply::ExecResult {
                session_id,
                exit_code,
                signal: None,
            };
        }
        Err(e) => return error(SidecarErrorCode::Vm, nook::error_chain(&e)),
    };
    let reply = loop {
        match remote.next_reply() {
            Ok(Some(SessionReply::Stdout { data })) | Ok(Some(SessionReply::Stderr { data })) => {
                log.push(&decode_bytes(&data).unwrap_or_default());
            }
            Ok(Some(SessionReply::Exit {
                timed_out: true, ..
            })) => {
                break error(
                    SidecarErrorCode::ExecTimeout,
                    format!(
                        "exec exceeded timeout ({} ms); its process group was killed",
                        timeout_ms.unwrap_or(0)
                    ),
                )
            }
            Ok(Some(SessionReply::Exit { code, signal, .. })) => {
                break SidecarReply::ExecResult {
                    session_id,
                    exit_code: code.unwrap_or_else(|| 128 + signal.unwrap_or(0)),
                    signal,
                }
            }
            Ok(Some(SessionReply::Error { message, .. })) => {
                break error(SidecarErrorCode::Exec, message)
            }
            Ok(other) => {
                break error(
                    SidecarErrorCode::Vm,
                    format!("the session ended the command without an exit: {other:?}"),
                )
            }
            Err(e) => break error(SidecarErrorCode::Vm, nook::error_chain(&e)),
        }
    };
    log.finish();
    reply
}

fn fs_error(code: GuestFsCode, message: impl Into<String>) -> SidecarReply {
    SidecarReply::GuestFsError {
        code,
        message: message.into(),
    }
}

fn fs_error_of(e: &SessionError) -> SidecarReply {
    let code = match e {
        SessionError::Refused { code, .. } => match code {
            SessionErrorCode::NotFound => GuestFsCode::NotFound,
            SessionErrorCode::NotADirectory => GuestFsCode::NotADirectory,
            SessionErrorCode::IsADirectory => GuestFsCode::IsADirectory,
            _ => GuestFsCode::IoError,
        },
        _ => GuestFsCode::IoError,
    };
    fs_error(code, nook::error_chain(e))
}

fn guest_fs(
    s: &SidecarSession,
    c: &SessionClient,
    session_id: String,
    op: GuestFsOperation,
    guest_path: &str,
    content_base64: Option<String>,
) -> SidecarReply {
    let Some(path) = resolve_in_workspace(&s.workspace, guest_path) else {
        return fs_error(
            GuestFsCode::InvalidPath,
            format!("`{guest_path}` is outside {}", s.workspace),
        );
    };
    let ok = |names, content_base64| SidecarReply::GuestFsOk {
        session_id: session_id.clone(),
        names,
        content_base64,
    };
    let result = match op {
        GuestFsOperation::ListDir => c.list(&path).map(|(entries, _)| {
            let mut names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
            names.sort();
            ok(Some(names), None)
        }),
        GuestFsOperation::ReadFile => {
            let mut buf = Vec::new();
            match c.read_to(&path, &mut buf, Some(MAX_READ_FILE)) {
                Ok(r) if r.truncated => {
                    return fs_error(
                        GuestFsCode::IoError,
                        format!(
                            "{path} has {} bytes, more than read_file returns ({MAX_READ_FILE})",
                            r.size
                        ),
                    )
                }
                Ok(_) => Ok(ok(
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&buf)),
                )),
                Err(e) => Err(e),
            }
        }
        GuestFsOperation::WriteFile => {
            let Ok(bytes) = decode_bytes(content_base64.as_deref().unwrap_or_default()) else {
                return fs_error(GuestFsCode::IoError, "content_base64 is not base64");
            };
            c.write_from(&path, 0o644, &mut &bytes[..])
                .map(|()| ok(None, None))
        }
        GuestFsOperation::Mkdir => c.mkdir_all(&path, 0o755).map(|()| ok(None, None)),
        GuestFsOperation::Remove => c.remove(&path, true).map(|()| ok(None, None)),
    };
    result.unwrap_or_else(|e| fs_error_of(&e))
}
