//! Background processes of a session (`exec -d`): they outlive the
//! connection that started them; their output goes to
//! `procs/PID.log`, which clients poll; they take stdin, signals and waits.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nook::{Child, ChildHandle, ChildStdin, ExecEvent};

use crate::exec::exec_error_reply;
use crate::host::{send, Host};
use crate::wire::{
    decode_bytes, encode_bytes, ProcExit, SessionErrorCode, SessionReply, SessionRequest,
    MAX_PROC_READ,
};

/// A background process the host keeps track of.
#[derive(Debug)]
pub(crate) struct Detached {
    handle: ChildHandle,
    stdin: Option<ChildStdin>,
    /// Set when it ended (kept so a late `proc_wait` or poll learns how).
    exit: Option<ProcExit>,
}

fn no_process(pid: u32) -> SessionReply {
    SessionReply::Error {
        code: SessionErrorCode::NoProcess,
        message: format!("no background process {pid} in this session"),
    }
}

/// Leaves `child` running in the background: replies `started` with its
/// pid, and drains its output to the session's process log until it ends.
/// It counts as a running command (the session does not idle out while it
/// runs) unless it is a `service` of the session.
pub(crate) fn detach(
    host: &Arc<Host>,
    mut child: Child,
    service: bool,
    w: &mut UnixStream,
) -> std::io::Result<()> {
    let Some(pid) = child.pid() else {
        return send(
            w,
            &SessionReply::Error {
                code: SessionErrorCode::Vm,
                message: "the guest reported no pid".into(),
            },
        );
    };
    let procs = host.dir.procs_dir();
    let _ = std::fs::create_dir_all(&procs);
    let log_path = procs.join(format!("{pid}.log"));
    let mut log = std::fs::File::create(&log_path).ok();
    host.detached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            pid,
            Detached {
                handle: child.handle(),
                stdin: child.take_stdin(),
                exit: None,
            },
        );
    let busy = usize::from(!service);
    host.busy.fetch_add(busy, Ordering::Relaxed);
    let h = host.clone();
    let spawned = std::thread::Builder::new()
        .name("nook-detached".into())
        .spawn(move || {
            let exit = loop {
                match child.next_event() {
                    Ok(ExecEvent::Stdout(b)) | Ok(ExecEvent::Stderr(b)) => {
                        if let Some(f) = log.as_mut() {
                            let _ = f.write_all(&b);
                        }
                    }
                    Ok(ExecEvent::Exit(s)) => {
                        break ProcExit {
                            code: s.code,
                            signal: s.signal,
                            timed_out: s.timed_out,
                        }
                    }
                    Err(e) => {
                        tracing::warn!("nook session {}: background process {pid}: {e}", h.name);
                        break ProcExit {
                            code: None,
                            signal: None,
                            timed_out: false,
                        };
                    }
                }
            };
            if let Some(d) = h
                .detached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&pid)
            {
                d.exit = Some(exit);
                d.stdin = None;
            }
            h.busy.fetch_sub(busy, Ordering::Relaxed);
            h.touch();
        });
    if spawned.is_err() {
        host.busy.fetch_sub(busy, Ordering::Relaxed);
    }
    send(w, &SessionReply::Started { pid })
}

/// Answers a `signal`, `proc_read`, `proc_stdin` or `proc_wait` request.
pub(crate) fn serve_proc(host: &Host, req: SessionRequest) -> SessionReply {
    let table = || host.detached.lock().unwrap_or_else(|p| p.into_inner());
    match req {
        SessionRequest::Signal { pid, signal } => {
            let handle = table()
                .get(&pid)
                .filter(|d| d.exit.is_none())
                .map(|d| d.handle.clone());
            match handle.map(|h| h.signal(signal)) {
                None => no_process(pid),
                Some(Ok(())) => SessionReply::Ok,
                Some(Err(e)) => exec_error_reply(&e),
            }
        }
        SessionRequest::ProcStdin { pid, data, close } => {
            let Ok(bytes) = decode_bytes(&data) else {
                return SessionReply::Error {
                    code: SessionErrorCode::BadRequest,
                    message: "stdin data is not base64".into(),
                };
            };
            // Take the writer out: a write may wait for the command's credit.
            let Some(mut stdin) = table().get_mut(&pid).and_then(|d| d.stdin.take()) else {
                return SessionReply::Error {
                    code: SessionErrorCode::NoProcess,
                    message: format!("background process {pid} takes no stdin (start it with stdin, before closing it)"),
                };
            };
            if let Err(e) = stdin.write_all(&bytes) {
                return SessionReply::Error {
                    code: SessionErrorCode::Vm,
                    message: format!("stdin of {pid}: {e}"),
                };
            }
            if !close {
                if let Some(d) = table().get_mut(&pid) {
                    d.stdin = Some(stdin);
                }
            }
            SessionReply::Ok
        }
        SessionRequest::ProcWait { pid } => loop {
            match table().get(&pid).map(|d| d.exit) {
                None => return no_process(pid),
                Some(Some(e)) => {
                    return SessionReply::Exit {
                        code: e.code,
                        signal: e.signal,
                        timed_out: e.timed_out,
                    }
                }
                Some(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        },
        SessionRequest::ProcRead {
            pid,
            offset,
            max_bytes,
        } => {
            // The exit is read before the log, so an `exit` reply never
            // misses output written before it.
            let Some(exit) = table().get(&pid).map(|d| d.exit) else {
                return no_process(pid);
            };
            let max = max_bytes.unwrap_or(MAX_PROC_READ).min(MAX_PROC_READ);
            let path = host.dir.procs_dir().join(format!("{pid}.log"));
            let mut buf = Vec::new();
            let mut len = 0;
            if let Ok(mut f) = std::fs::File::open(&path) {
                len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if f.seek(SeekFrom::Start(offset)).is_ok() {
                    let _ = f.take(max).read_to_end(&mut buf);
                }
            }
            let next_offset = offset + buf.len() as u64;
            SessionReply::ProcOutput {
                data: encode_bytes(&buf),
                next_offset,
                truncated: next_offset < len,
                exit,
            }
        }
        other => SessionReply::Error {
            code: SessionErrorCode::BadRequest,
            message: format!("not a process request: {other:?}"),
        },
    }
}
