//! Running commands in a VM: [`ExecBuilder`] -> [`Child`] / [`Output`].

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nook_proto::{ErrorCode, ExecRequest, HostMsg, Kind, Pipe, PipeClosed, Winsize, STDIO_CHUNK};

use crate::conn::{Conn, Event, StreamFlow};
use crate::error::{ChannelLoss, ExecError, ProtocolViolation, VmError};
use crate::exit_code;
use crate::vm::Vm;

/// How much longer than its own timeout the host waits for the guest to
/// report a command killed, before giving up on it.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when the command exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The guest killed it because its timeout passed.
    pub timed_out: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// The code a shell would report: the exit code, 128+signal for a signal,
    /// 124 for a timeout (as coreutils' `timeout` does).
    pub fn shell_code(&self) -> i32 {
        if self.timed_out {
            return exit_code::TIMEOUT;
        }
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => exit_code::killed_by(s),
            (None, None) => exit_code::NOOK_FAILED,
        }
    }
}

impl From<nook_proto::Exited> for ExitStatus {
    fn from(s: nook_proto::Exited) -> Self {
        ExitStatus {
            code: s.code,
            signal: s.signal,
            timed_out: s.timed_out,
        }
    }
}

/// Everything a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
enum StdinMode {
    Null,
    Bytes(Vec<u8>),
    Piped,
}

/// Builds one command: argv, env, cwd, stdin, tty, timeout.
#[derive(Debug)]
pub struct ExecBuilder<'vm> {
    vm: &'vm Vm,
    req: ExecRequest,
    stdin: StdinMode,
}

impl<'vm> ExecBuilder<'vm> {
    /// A command with the VM image's defaults (Env, WorkingDir, User),
    /// which the builder's own settings override.
    pub(crate) fn new(vm: &'vm Vm, argv: Vec<String>) -> Self {
        let mut req = ExecRequest {
            argv,
            ..Default::default()
        };
        if let Some(image) = vm.image_config() {
            req.env = image
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect();
            req.cwd = image.working_dir.clone();
            req.user = image.user.clone();
        }
        ExecBuilder {
            vm,
            req,
            stdin: StdinMode::Null,
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.req.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.req
            .env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Working directory in the guest.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.req.cwd = Some(dir.into());
        self
    }

    /// Run as this user (`name`, `uid`, `uid:gid`, `name:group`), resolved
    /// in the guest root's /etc/passwd and /etc/group.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.req.user = Some(user.into());
        self
    }

    /// Feeds these bytes as stdin, then end of input.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = StdinMode::Bytes(bytes.into());
        self
    }

    /// Stdin is streamed through [`Child::take_stdin`].
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = StdinMode::Piped;
        self
    }

    /// Run on a pseudo-terminal of this size (stdout and stderr merge).
    pub fn tty(mut self, size: Winsize) -> Self {
        self.req.tty = Some(size);
        self
    }

    /// Kill the command's whole process group after `d`.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.req.timeout_ms = Some(d.as_millis().min(u64::MAX as u128) as u64);
        self
    }

    /// Starts the command; returns once the guest has started it (or failed
    /// to: a missing program is [`ExecError::NotFound`]).
    pub fn spawn(self) -> Result<Child, ExecError> {
        let conn = self.vm.conn().clone();
        let (stream, events, flow) = conn.open_stream()?;
        let mut req = self.req;
        req.stdin = !matches!(self.stdin, StdinMode::Null);
        let deadline = req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms) + TIMEOUT_GRACE);
        let mut child = Child {
            conn,
            stream,
            events,
            flow,
            pid: None,
            stdin: None,
            deadline,
            done: false,
        };
        child.conn.send(stream, &HostMsg::Exec(req))?;
        match child.recv()? {
            Event::Started(pid) => child.pid = Some(pid),
            other => return Err(child.unexpected(other, "the command's start")),
        }
        let stdin = ChildStdin {
            conn: child.conn.clone(),
            stream,
            flow: child.flow.clone(),
            closed: false,
        };
        match self.stdin {
            StdinMode::Null => {}
            StdinMode::Piped => child.stdin = Some(stdin),
            StdinMode::Bytes(bytes) => feed(stdin, bytes)?,
        }
        Ok(child)
    }

    /// Runs the command to completion and collects its output.
    pub fn output(self) -> Result<Output, ExecError> {
        self.spawn()?.wait_with_output()
    }
}

/// Feeds `bytes` to a command's stdin on a thread of its own: the command
/// takes them only as fast as it reads, while its output must be read
/// meanwhile (a large input to `cat` would deadlock otherwise).
fn feed(mut stdin: ChildStdin, bytes: Vec<u8>) -> Result<(), VmError> {
    std::thread::Builder::new()
        .name(format!("nook-feed{}", stdin.stream))
        .spawn(move || {
            // A command that stops reading early makes this fail: as with a
            // shell pipe, that is the command's choice, not an error.
            let _ = stdin.write_all(&bytes);
            let _ = stdin.close();
        })
        .map(|_| ())
        .map_err(VmError::Channel)
}

/// Output or the end of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Always the last event.
    Exit(ExitStatus),
}

/// A command running in the guest.
#[derive(Debug)]
pub struct Child {
    conn: Arc<Conn>,
    stream: u32,
    events: Receiver<Event>,
    flow: Arc<StreamFlow>,
    pid: Option<u32>,
    stdin: Option<ChildStdin>,
    deadline: Option<Instant>,
    done: bool,
}

impl Child {
    /// The command's pid inside the guest.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The stdin writer, when the builder asked for [`ExecBuilder::stdin_piped`].
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Sends `signal` to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), ExecError> {
        self.handle().signal(signal)
    }

    /// Tells the command's terminal its new size.
    pub fn resize(&self, size: Winsize) -> Result<(), ExecError> {
        self.handle().resize(size)
    }

    /// A handle that signals and resizes the command from another thread.
    pub fn handle(&self) -> ChildHandle {
        ChildHandle {
            conn: self.conn.clone(),
            stream: self.stream,
            flow: self.flow.clone(),
        }
    }

    fn recv(&mut self) -> Result<Event, ExecError> {
        match self.deadline {
            None => self
                .events
                .recv()
                .map_err(|_| ExecError::Vm(VmError::ChannelLost(ChannelLoss::VmGone))),
            Some(d) => match self
                .events
                .recv_timeout(d.saturating_duration_since(Instant::now()))
            {
                Ok(e) => Ok(e),
                Err(RecvTimeoutError::Timeout) => Err(ExecError::Timeout {
                    console: self.conn.console(),
                }),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(ExecError::Vm(VmError::ChannelLost(ChannelLoss::VmGone)))
                }
            },
        }
    }

    /// The error for event `e` arriving where `expected` should have.
    fn unexpected(&mut self, e: Event, expected: &'static str) -> ExecError {
        self.done = true;
        let unexpected = |got| {
            ExecError::Vm(VmError::Protocol(ProtocolViolation::Unexpected {
                expected,
                got,
            }))
        };
        match e {
            Event::Error(r) => match r.code {
                ErrorCode::NotFound => ExecError::NotFound(r.message),
                ErrorCode::NotExecutable => ExecError::NotExecutable(r.message),
                ErrorCode::BadRequest => ExecError::BadRequest(r.message),
                _ => ExecError::Agent(r.message),
            },
            Event::Lost(why) => ExecError::Vm(VmError::ChannelLost(why)),
            Event::Overrun(pipe, source) => {
                ExecError::Vm(VmError::Protocol(ProtocolViolation::WindowOverrun {
                    pipe,
                    source,
                }))
            }
            Event::Started(_) => unexpected(Kind::Started),
            Event::Stdout(_) => unexpected(Kind::Stdout),
            Event::Stderr(_) => unexpected(Kind::Stderr),
            Event::Exit(_) => unexpected(Kind::Exit),
            Event::FileContent(_) => unexpected(Kind::FileContent),
            Event::FileDone(_) => unexpected(Kind::FileDone),
            Event::DesktopImage(_) => unexpected(Kind::DesktopImage),
            Event::DesktopDone(_) => unexpected(Kind::DesktopDone),
        }
    }

    /// The next piece of output, or the exit. Blocks. Taking output gives
    /// the guest credit to send more: a caller that stops calling this
    /// stops the command once a window is in flight (see `docs/protocol.md`).
    pub fn next_event(&mut self) -> Result<ExecEvent, ExecError> {
        if self.done {
            return Err(ExecError::Finished);
        }
        match self.recv()? {
            Event::Stdout(b) => {
                self.credit(Pipe::Stdout, b.len());
                Ok(ExecEvent::Stdout(b))
            }
            Event::Stderr(b) => {
                self.credit(Pipe::Stderr, b.len());
                Ok(ExecEvent::Stderr(b))
            }
            Event::Exit(s) => {
                self.done = true;
                Ok(ExecEvent::Exit(s.into()))
            }
            other => Err(self.unexpected(other, "output or the exit")),
        }
    }

    fn credit(&self, pipe: Pipe, bytes: usize) {
        if let Some(c) = self.flow.consume(pipe, bytes) {
            // A failed send shows up as a lost channel on the next event.
            let _ = self.conn.send(self.stream, &HostMsg::Credit(c));
        }
    }

    /// Waits for the end, collecting stdout and stderr.
    pub fn wait_with_output(mut self) -> Result<Output, ExecError> {
        drop(self.stdin.take());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_event()? {
                ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ExecEvent::Exit(status) => {
                    return Ok(Output {
                        status,
                        stdout,
                        stderr,
                    })
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.done {
            // Nobody will read the rest: stop the command and release the
            // agent's pumps, which may be waiting for credit.
            let handle = self.handle();
            let _ = handle.signal(9);
            let _ = handle.close_output(Pipe::Stdout);
            let _ = handle.close_output(Pipe::Stderr);
        }
        self.conn.close_stream(self.stream);
    }
}

/// Signals, resizes and closes the output of a running command; cheap to
/// clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    conn: Arc<Conn>,
    stream: u32,
    flow: Arc<StreamFlow>,
}

impl ChildHandle {
    /// Sends `signal` to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), ExecError> {
        Ok(self.conn.send(self.stream, &HostMsg::Signal(signal))?)
    }

    /// Tells the command's terminal its new size.
    pub fn resize(&self, size: Winsize) -> Result<(), ExecError> {
        Ok(self.conn.send(self.stream, &HostMsg::Resize(size))?)
    }

    /// The reader of the command's stdout or stderr is gone: the guest
    /// closes that pipe, so the command gets `EPIPE`/`SIGPIPE` on its next
    /// write there, as in a shell pipeline; output still in flight is
    /// dropped.
    pub fn close_output(&self, pipe: Pipe) -> Result<(), ExecError> {
        self.flow.close_output(pipe);
        Ok(self
            .conn
            .send(self.stream, &HostMsg::PipeClosed(PipeClosed { pipe }))?)
    }
}

/// Writes to a running command's stdin. Dropping it closes stdin.
///
/// Writes block while the guest has granted no credit (the command is not
/// reading), and fail with `BrokenPipe` once the command closed its stdin
/// or ended.
#[derive(Debug)]
pub struct ChildStdin {
    conn: Arc<Conn>,
    stream: u32,
    flow: Arc<StreamFlow>,
    closed: bool,
}

impl ChildStdin {
    /// Sends end of input.
    pub fn close(&mut self) -> io::Result<()> {
        if !self.closed {
            self.closed = true;
            self.conn
                .send_raw(self.stream, Kind::Stdin as u8, &[])
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        }
        Ok(())
    }
}

impl Write for ChildStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(n) = self.flow.stdin.acquire(buf.len().min(STDIO_CHUNK)) else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the command's stdin is closed",
            ));
        };
        self.conn
            .send_raw(self.stream, Kind::Stdin as u8, &buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChildStdin {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
