//! A command in a session as `nook::stdio::pump` drives it: `nook exec`
//! streams through the same pump as `nook run`, with the same policy for
//! closed pipes, write errors, signals and exit codes.

use std::io::Write;
use std::sync::{Arc, Mutex};

use nook::stdio::{CommandControl, PumpedCommand, StdinSink};
use nook::{ExecError, ExecEvent, ExitStatus, Pipe, Winsize};

use crate::client::{ExecInputSender, RemoteExec};
use crate::error::SessionError;
use crate::wire::{decode_bytes, SessionErrorCode, SessionReply};

/// The one writer of a command's input lines: stdin chunks and requests
/// share it, so lines never interleave on the socket.
type SharedInput = Arc<Mutex<ExecInputSender>>;

fn lock(input: &SharedInput) -> std::sync::MutexGuard<'_, ExecInputSender> {
    input.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a failure of the session's connection is to the pump.
fn lost(e: SessionError) -> ExecError {
    ExecError::Remote(Box::new(e))
}

fn lost_io(e: std::io::Error) -> ExecError {
    lost(SessionError::Connection(e))
}

/// The exec error a session's error line stands for.
fn refused(code: SessionErrorCode, message: String) -> ExecError {
    match code {
        SessionErrorCode::NotFound => ExecError::NotFound(message),
        SessionErrorCode::NotExecutable => ExecError::NotExecutable(message),
        SessionErrorCode::BadRequest => ExecError::BadRequest(message),
        _ => lost(SessionError::Refused { code, message }),
    }
}

/// A [`RemoteExec`] ready for `nook::stdio::pump`.
#[derive(Debug)]
pub struct PumpedRemote {
    exec: RemoteExec,
    input: SharedInput,
    stdin: bool,
    done: bool,
}

impl RemoteExec {
    /// This command for `nook::stdio::pump`; `stdin` when it was started
    /// with stdin forwarded.
    pub fn into_pumped(self, stdin: bool) -> Result<PumpedRemote, SessionError> {
        let input = self.input.try_clone().map_err(SessionError::Connection)?;
        Ok(PumpedRemote {
            exec: self,
            input: Arc::new(Mutex::new(input)),
            stdin,
            done: false,
        })
    }
}

impl PumpedCommand for PumpedRemote {
    fn next_event(&mut self) -> Result<ExecEvent, ExecError> {
        if self.done {
            return Err(ExecError::Finished);
        }
        let reply = self.exec.next_reply();
        let bytes = |data: &str| {
            decode_bytes(data).map_err(|e| lost(SessionError::Protocol(e.to_string())))
        };
        let event = match reply.map_err(lost)? {
            Some(SessionReply::Stdout { data }) => return Ok(ExecEvent::Stdout(bytes(&data)?)),
            Some(SessionReply::Stderr { data }) => return Ok(ExecEvent::Stderr(bytes(&data)?)),
            Some(SessionReply::Exit {
                code,
                signal,
                timed_out,
            }) => Ok(ExecEvent::Exit(ExitStatus {
                code,
                signal,
                timed_out,
            })),
            Some(SessionReply::Error { code, message }) => Err(refused(code, message)),
            None => Err(lost(SessionError::Protocol(
                "the session host ended the command without an exit".into(),
            ))),
            Some(other) => Err(lost(SessionError::Protocol(format!(
                "expected output or the exit, got {other:?}"
            )))),
        };
        self.done = true;
        event
    }

    fn take_stdin(&mut self) -> Option<Box<dyn StdinSink>> {
        std::mem::take(&mut self.stdin).then(|| {
            Box::new(RemoteStdin {
                input: self.input.clone(),
            }) as Box<dyn StdinSink>
        })
    }

    fn control(&self) -> Arc<dyn CommandControl> {
        Arc::new(RemoteControl {
            input: self.input.clone(),
        })
    }
}

/// Stdin lines to the session host; back-pressure comes from the socket
/// (the host writes to the command only as the guest grants credit).
struct RemoteStdin {
    input: SharedInput,
}

impl Write for RemoteStdin {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.input).stdin(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StdinSink for RemoteStdin {
    fn close(&mut self) -> std::io::Result<()> {
        lock(&self.input).close_stdin()
    }
}

struct RemoteControl {
    input: SharedInput,
}

impl CommandControl for RemoteControl {
    fn signal(&self, signal: i32) -> Result<(), ExecError> {
        lock(&self.input).signal(signal).map_err(lost_io)
    }
    fn resize(&self, size: Winsize) -> Result<(), ExecError> {
        lock(&self.input)
            .resize(size.rows, size.cols)
            .map_err(lost_io)
    }
    fn close_output(&self, pipe: Pipe) -> Result<(), ExecError> {
        lock(&self.input).close_output(pipe).map_err(lost_io)
    }
}
