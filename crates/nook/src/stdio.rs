//! Pumping a running command's stdio to the host's own streams, with the
//! semantics of a shell pipeline, and deciding the exit code: the one
//! implementation behind `nook run` and every front end that streams a
//! command.
//!
//! - Output is written as it comes; the guest is granted credit only as
//!   it is written, so a slow reader of nook's stdout slows the command
//!   instead of filling memory (see `docs/protocol.md`).
//! - A closed stdout (`EPIPE`) closes the command's stdout in the guest:
//!   the command gets `SIGPIPE`/`EPIPE` on its next write there, as in a
//!   shell, and the exit code is the command's own (141 when `SIGPIPE`
//!   killed it).
//! - Any other write error (`ENOSPC` on `/dev/full`, ...) closes the pipe
//!   the same way, is reported, and the exit code is 125.
//! - Stdin is forwarded at the pace the command reads it; when the command
//!   closes its stdin or ends, forwarding stops.
//! - A signal the front end receives goes to the command's process group;
//!   a second one, or the command still running after the grace period,
//!   ends the pump as interrupted (128 + the signal).
//!
//! ```no_run
//! # fn f(vm: &nook::Vm) {
//! use nook::stdio::{self, StdioStreams};
//! let child = vm.exec(["sh", "-c", "echo hi"]).spawn().unwrap();
//! let (_controller, controls) = stdio::controls();
//! let ending = stdio::pump(child, StdioStreams::inherit(false), controls);
//! std::process::exit(ending.exit_code());
//! # }
//! ```

use std::io::{self, Read, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use nook_proto::{Pipe, Winsize, STDIO_CHUNK};

use crate::error::ExecError;
use crate::exec::{Child, ChildHandle, ChildStdin, ExecEvent, ExitStatus};
use crate::exit_code;

/// A running command as [`pump`] drives it, wherever it runs: a [`Child`]
/// of a [`crate::Vm`] this process owns, or a command in a session reached
/// through its host (`nook_serve::RemoteExec`). Every front end streams
/// stdio through [`pump`], so they share one policy for closed pipes,
/// write errors, signals and exit codes.
pub trait PumpedCommand: Send + 'static {
    /// The next piece of output, or the exit (always last). Blocks. Taking
    /// output is what lets the command produce more (back-pressure).
    fn next_event(&mut self) -> Result<ExecEvent, ExecError>;
    /// The command's stdin, when it was started with stdin piped (taken
    /// once).
    fn take_stdin(&mut self) -> Option<Box<dyn StdinSink>>;
    /// Signals, resizes and closes the output of the command, from any
    /// thread.
    fn control(&self) -> Arc<dyn CommandControl>;
}

/// Where a command's stdin goes: writes block while the command is not
/// reading, and fail with `BrokenPipe` once it closed its stdin or ended.
pub trait StdinSink: Write + Send {
    /// Sends end of input.
    fn close(&mut self) -> io::Result<()>;
}

/// Requests to a running command other than its stdin.
pub trait CommandControl: Send + Sync {
    /// Sends `signal` to the command's process group.
    fn signal(&self, signal: i32) -> Result<(), ExecError>;
    /// Tells the command's terminal its new size.
    fn resize(&self, size: Winsize) -> Result<(), ExecError>;
    /// The reader of `pipe` is gone: close it at the command's end, so the
    /// command gets `EPIPE`/`SIGPIPE` on its next write there.
    fn close_output(&self, pipe: Pipe) -> Result<(), ExecError>;
}

impl PumpedCommand for Child {
    fn next_event(&mut self) -> Result<ExecEvent, ExecError> {
        Child::next_event(self)
    }
    fn take_stdin(&mut self) -> Option<Box<dyn StdinSink>> {
        Child::take_stdin(self).map(|s| Box::new(s) as Box<dyn StdinSink>)
    }
    fn control(&self) -> Arc<dyn CommandControl> {
        Arc::new(self.handle())
    }
}

impl StdinSink for ChildStdin {
    fn close(&mut self) -> io::Result<()> {
        ChildStdin::close(self)
    }
}

impl CommandControl for ChildHandle {
    fn signal(&self, signal: i32) -> Result<(), ExecError> {
        ChildHandle::signal(self, signal)
    }
    fn resize(&self, size: Winsize) -> Result<(), ExecError> {
        ChildHandle::resize(self, size)
    }
    fn close_output(&self, pipe: Pipe) -> Result<(), ExecError> {
        ChildHandle::close_output(self, pipe)
    }
}

/// How long a command may run on after the first signal before the pump
/// gives up on it.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(3);

/// Where a command's stdio goes on the host.
pub struct StdioStreams {
    /// Forwarded to the command's stdin (spawn it with
    /// [`crate::ExecBuilder::stdin_piped`]); `None`: nothing is forwarded.
    pub stdin: Option<Box<dyn Read + Send>>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl std::fmt::Debug for StdioStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioStreams")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

impl StdioStreams {
    /// This process's own stdout and stderr, and its stdin when `stdin`.
    pub fn inherit(stdin: bool) -> StdioStreams {
        StdioStreams {
            stdin: stdin.then(|| Box::new(io::stdin()) as Box<dyn Read + Send>),
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
        }
    }
}

/// A byte buffer several writers share: a command's captured output when
/// it is pumped (clone it into [`StdioStreams`], [`SharedBuffer::take`]
/// after the pump).
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// What was written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Input {
    Signal(i32),
    Resize(Winsize),
    Output(OutputEnd),
    GraceOver,
}

/// Requests from the front end to a pumped command; cheap to clone and
/// usable from any thread (a signal handler's thread).
#[derive(Debug, Clone)]
pub struct Controller {
    tx: Sender<Input>,
}

impl Controller {
    /// The front end received `signal` (SIGINT, SIGTERM, SIGHUP): it goes
    /// to the command's process group.
    pub fn signal(&self, signal: i32) {
        let _ = self.tx.send(Input::Signal(signal));
    }

    /// The front end's terminal changed size.
    pub fn resize(&self, size: Winsize) {
        let _ = self.tx.send(Input::Resize(size));
    }
}

/// The receiving side of a [`Controller`], handed to [`pump`].
#[derive(Debug)]
pub struct Controls {
    rx: Receiver<Input>,
    tx: Sender<Input>,
    grace: Duration,
}

/// A connected [`Controller`] and [`Controls`]. Create them before the VM
/// boots, so a signal during the boot is seen ([`Controls::take_signal`]).
pub fn controls() -> (Controller, Controls) {
    let (tx, rx) = channel();
    let controller = Controller { tx: tx.clone() };
    let controls = Controls {
        rx,
        tx,
        grace: SIGNAL_GRACE,
    };
    (controller, controls)
}

impl Controls {
    /// How long the command may run on after a signal (default
    /// [`SIGNAL_GRACE`]).
    pub fn with_grace(mut self, grace: Duration) -> Controls {
        self.grace = grace;
        self
    }

    /// The first signal received so far, if any (the other requests are
    /// dropped): for a front end whose boot a signal interrupted.
    pub fn take_signal(&self) -> Option<i32> {
        self.rx.try_iter().find_map(|i| match i {
            Input::Signal(s) => Some(s),
            _ => None,
        })
    }
}

/// How a pumped command ended, and so how the front end exits.
#[derive(Debug)]
pub enum Ending {
    /// The command ended (or its timeout killed it: `status.timed_out`).
    Exited(ExitStatus),
    /// Writing its output failed with something other than a closed pipe.
    OutputFailed {
        pipe: Pipe,
        error: io::Error,
        /// How the command ended, when it did.
        status: Option<ExitStatus>,
    },
    /// The front end was signalled and the command did not end in time.
    Interrupted { signal: i32 },
    /// Running the command failed (the VM was lost, the guest refused it).
    Failed(ExecError),
}

impl Ending {
    /// The exit code a front end exits with: the command's own code; 124
    /// when its timeout killed it; 125 when output could not be written or
    /// nook failed; 128 + N when the front end was interrupted by signal N.
    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::Exited(status) => status.shell_code(),
            Ending::OutputFailed { .. } => exit_code::NOOK_FAILED,
            Ending::Interrupted { signal } => exit_code::killed_by(*signal),
            Ending::Failed(e) => e.exit_code(),
        }
    }

    /// What to tell the user, if anything (one line, causes included).
    pub fn message(&self) -> Option<String> {
        match self {
            Ending::Exited(s) if s.timed_out => {
                Some("the command timed out and was killed".to_string())
            }
            Ending::Exited(_) | Ending::Interrupted { .. } => None,
            Ending::OutputFailed { pipe, error, .. } => {
                let name = if *pipe == Pipe::Stderr {
                    "stderr"
                } else {
                    "stdout"
                };
                Some(format!("cannot write the command's {name}: {error}"))
            }
            Ending::Failed(e) => Some(crate::error::chain(e)),
        }
    }
}

/// What the output thread saw last.
struct OutputEnd {
    result: Result<ExitStatus, ExecError>,
    failure: Option<(Pipe, io::Error)>,
}

impl OutputEnd {
    fn ending(self) -> Ending {
        match (self.result, self.failure) {
            (status, Some((pipe, error))) => Ending::OutputFailed {
                pipe,
                error,
                status: status.ok(),
            },
            (Ok(status), None) => Ending::Exited(status),
            (Err(e), None) => Ending::Failed(e),
        }
    }
}

/// Runs `child` to its end with its stdio connected to `streams`, obeying
/// `controls`; returns how it ended. Threads it starts for stdin and
/// output end with the command (a stdin reader blocked in `read` ends at
/// its next read).
pub fn pump(mut child: impl PumpedCommand, streams: StdioStreams, controls: Controls) -> Ending {
    let handle = child.control();
    if let (Some(from), Some(to)) = (streams.stdin, child.take_stdin()) {
        let spawned = std::thread::Builder::new()
            .name("nook-stdin".into())
            .spawn(move || forward_stdin(from, to));
        if let Err(e) = spawned {
            return Ending::Failed(ExecError::Vm(crate::VmError::Channel(e)));
        }
    }
    let (stdout, stderr) = (streams.stdout, streams.stderr);
    let tx = controls.tx.clone();
    let output_handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("nook-output".into())
        .spawn(move || {
            let end = write_output(child, &output_handle, stdout, stderr);
            let _ = tx.send(Input::Output(end));
        });
    if let Err(e) = spawned {
        return Ending::Failed(ExecError::Vm(crate::VmError::Channel(e)));
    }
    let mut interrupted: Option<i32> = None;
    loop {
        let Ok(input) = controls.rx.recv() else {
            // Cannot happen: `controls` holds a sender.
            return Ending::Interrupted {
                signal: interrupted.unwrap_or(15),
            };
        };
        match input {
            Input::Output(end) => return end.ending(),
            Input::Resize(size) => {
                let _ = handle.resize(size);
            }
            Input::Signal(signal) if interrupted.is_some() => {
                return Ending::Interrupted { signal };
            }
            Input::Signal(signal) => {
                interrupted = Some(signal);
                // On a thread of its own: a request may wait behind stdin
                // the command is not reading, and the grace period must
                // run regardless.
                let control = handle.clone();
                let _ = std::thread::Builder::new()
                    .name("nook-signal".into())
                    .spawn(move || control.signal(signal));
                let tx = controls.tx.clone();
                let grace = controls.grace;
                let _ = std::thread::Builder::new()
                    .name("nook-grace".into())
                    .spawn(move || {
                        std::thread::sleep(grace);
                        let _ = tx.send(Input::GraceOver);
                    });
            }
            Input::GraceOver => {
                if let Some(signal) = interrupted {
                    return Ending::Interrupted { signal };
                }
            }
        }
    }
}

/// Copies the host's stdin to the command until either side ends.
fn forward_stdin(mut from: Box<dyn Read + Send>, mut to: Box<dyn StdinSink>) {
    let mut buf = vec![0u8; STDIO_CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    // The command closed its stdin or ended.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.close();
}

/// Writes the command's output as it comes, until its exit. A pipe whose
/// writer fails is closed in the guest; the first failure other than a
/// closed pipe is kept for the exit decision.
fn write_output(
    mut child: impl PumpedCommand,
    handle: &Arc<dyn CommandControl>,
    mut stdout: Box<dyn Write + Send>,
    mut stderr: Box<dyn Write + Send>,
) -> OutputEnd {
    let mut failure: Option<(Pipe, io::Error)> = None;
    let (mut stdout_open, mut stderr_open) = (true, true);
    loop {
        let (pipe, bytes) = match child.next_event() {
            Ok(ExecEvent::Stdout(b)) => (Pipe::Stdout, b),
            Ok(ExecEvent::Stderr(b)) => (Pipe::Stderr, b),
            Ok(ExecEvent::Exit(status)) => {
                return OutputEnd {
                    result: Ok(status),
                    failure,
                }
            }
            Err(e) => {
                return OutputEnd {
                    result: Err(e),
                    failure,
                }
            }
        };
        let (writer, open) = match pipe {
            Pipe::Stdout => (&mut stdout, &mut stdout_open),
            _ => (&mut stderr, &mut stderr_open),
        };
        if !*open {
            continue;
        }
        if let Err(error) = writer.write_all(&bytes).and_then(|_| writer.flush()) {
            *open = false;
            let _ = handle.close_output(pipe);
            if error.kind() != io::ErrorKind::BrokenPipe && failure.is_none() {
                failure = Some((pipe, error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> ExitStatus {
        ExitStatus {
            code,
            signal,
            timed_out,
        }
    }

    #[test]
    fn exit_codes_follow_the_documented_policy() {
        assert_eq!(Ending::Exited(status(Some(7), None, false)).exit_code(), 7);
        // A command killed by SIGPIPE after its reader went away: 141.
        assert_eq!(
            Ending::Exited(status(None, Some(13), false)).exit_code(),
            141
        );
        let timed_out = Ending::Exited(status(None, Some(9), true));
        assert_eq!(timed_out.exit_code(), 124);
        assert!(timed_out.message().unwrap().contains("timed out"));
        let full = Ending::OutputFailed {
            pipe: Pipe::Stdout,
            error: io::Error::from_raw_os_error(28),
            status: Some(status(Some(0), None, false)),
        };
        assert_eq!(full.exit_code(), 125);
        let msg = full.message().unwrap();
        assert!(
            msg.contains("stdout") && msg.contains("No space left"),
            "{msg}"
        );
        assert_eq!(Ending::Interrupted { signal: 2 }.exit_code(), 130);
        assert_eq!(Ending::Interrupted { signal: 15 }.exit_code(), 143);
        let not_found = Ending::Failed(ExecError::NotFound("x: command not found".into()));
        assert_eq!(not_found.exit_code(), 127);
        assert_eq!(not_found.message().unwrap(), "x: command not found");
    }

    #[test]
    fn a_signal_during_boot_is_kept_for_the_front_end() {
        let (controller, controls) = controls();
        controller.resize(Winsize { rows: 1, cols: 2 });
        controller.signal(15);
        controller.signal(2);
        assert_eq!(controls.take_signal(), Some(15));
    }
}
