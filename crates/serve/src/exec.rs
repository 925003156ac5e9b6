//! Commands in a session: attached execs streamed over a client's
//! connection, and detached ones that outlive it.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;

use nook::{Child, ExecError, ExecEvent};

use crate::host::{read_line, send, Host};
use crate::wire::{
    decode_bytes, encode_bytes, ExecInput, ExecSpec, SessionErrorCode, SessionReply,
};

/// Starts `spec` in the session's VM.
pub(crate) fn spawn_child(host: &Host, spec: &ExecSpec) -> Result<Child, ExecError> {
    let guard = host.vm.read().unwrap_or_else(|p| p.into_inner());
    let Some(vm) = guard.as_ref() else {
        return Err(ExecError::Vm(nook::VmError::Config(
            "the session is stopping",
        )));
    };
    let mut b = vm.exec(spec.argv.clone()).envs(
        host.env
            .iter()
            .filter(|(k, _)| !spec.env.iter().any(|(k2, _)| k2 == k))
            .chain(&spec.env)
            .cloned(),
    );
    if let Some(cwd) = &spec.cwd {
        b = b.cwd(cwd.clone());
    }
    if let Some(user) = &spec.user {
        b = b.user(user.clone());
    }
    if let Some(t) = spec.tty {
        b = b.tty(t);
    }
    if let Some(ms) = spec.timeout_ms {
        b = b.timeout(std::time::Duration::from_millis(ms));
    }
    if spec.stdin {
        b = b.stdin_piped();
    }
    b.spawn()
}

/// The error line for a failed exec.
pub(crate) fn exec_error_reply(e: &ExecError) -> SessionReply {
    let code = match e {
        ExecError::NotFound(_) => SessionErrorCode::NotFound,
        ExecError::NotExecutable(_) => SessionErrorCode::NotExecutable,
        ExecError::BadRequest(_) => SessionErrorCode::BadRequest,
        _ => SessionErrorCode::Vm,
    };
    SessionReply::Error {
        code,
        message: nook::error_chain(e),
    }
}

fn exit_line(status: nook::ExitStatus) -> SessionReply {
    SessionReply::Exit {
        code: status.code,
        signal: status.signal,
        timed_out: status.timed_out,
    }
}

/// Streams an attached command: output to the client, the client's input
/// lines to the command. A client that goes away kills the command.
pub(crate) fn serve_attached(
    mut child: Child,
    mut r: BufReader<UnixStream>,
    w: &mut UnixStream,
) -> std::io::Result<()> {
    send(
        w,
        &SessionReply::Started {
            pid: child.pid().unwrap_or(0),
        },
    )?;
    let handle = child.handle();
    let mut stdin = child.take_stdin();
    let input = std::thread::Builder::new()
        .name("nook-exec-input".into())
        .spawn(move || loop {
            let line = match read_line(&mut r) {
                Ok(Some(l)) => l,
                // The client is gone: nobody will read the output.
                Ok(None) | Err(_) => {
                    let _ = handle.signal(9);
                    return;
                }
            };
            match serde_json::from_slice::<ExecInput>(&line) {
                Ok(ExecInput::Stdin { data }) => {
                    let Ok(bytes) = decode_bytes(&data) else {
                        continue;
                    };
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&bytes).is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(ExecInput::StdinClose) => stdin = None,
                Ok(ExecInput::Signal { signal }) => {
                    let _ = handle.signal(signal);
                }
                Ok(ExecInput::Resize(size)) => {
                    let _ = handle.resize(size);
                }
                Ok(ExecInput::CloseOutput { pipe }) => {
                    let _ = handle.close_output(pipe);
                }
                Err(e) => tracing::debug!("nook session: ignoring an input line: {e}"),
            }
        });
    let result = loop {
        let reply = match child.next_event() {
            Ok(ExecEvent::Stdout(b)) => SessionReply::Stdout {
                data: encode_bytes(&b),
            },
            Ok(ExecEvent::Stderr(b)) => SessionReply::Stderr {
                data: encode_bytes(&b),
            },
            Ok(ExecEvent::Exit(status)) => break send(w, &exit_line(status)),
            Err(e) => break send(w, &exec_error_reply(&e)),
        };
        if let Err(e) = send(w, &reply) {
            // Dropping the child kills the command.
            break Err(e);
        }
    };
    // Ends the input thread: its read sees end of stream.
    let _ = w.shutdown(std::net::Shutdown::Both);
    if let Ok(t) = input {
        let _ = t.join();
    }
    result
}
