//! Driving sessions from any process: start one (spawning its host
//! process), run commands in it, signal background processes, read its
//! console, stop and remove it.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::SessionError;
use crate::host::read_line;
use crate::state::{
    create_private_dir, host_alive, sessions_dir, SessionDir, SessionPhase, SessionSpec,
    SessionState,
};
use crate::wire::{
    encode_bytes, to_line, ExecInput, ExecSpec, ProcExit, SessionReply, SessionRequest,
};

/// How long `stop` waits for the host process to end.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Starts session `spec.name`: spawns `exe HOST_SUBCOMMAND DIR` (the `nook`
/// binary) detached, and waits until its VM serves or failed.
pub fn start(home: &Path, spec: &SessionSpec, exe: &Path) -> Result<SessionState, SessionError> {
    create_private_dir(&sessions_dir(home))?;
    let sd = SessionDir::new(home, &spec.name)?;
    if sd.0.exists() {
        return Err(SessionError::Exists(spec.name.clone()));
    }
    create_private_dir(&sd.0)?;
    sd.write_spec(spec)?;
    let log_path = sd.host_log();
    let log =
        std::fs::File::create(&log_path).map_err(|e| SessionError::io("create", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| SessionError::io("open", &log_path, e))?;
    let mut child = Command::new(exe)
        .arg(crate::HOST_SUBCOMMAND)
        .arg(&sd.0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| SessionError::io("run", exe, e))?;
    let deadline = Instant::now() + Duration::from_secs(spec.boot_timeout_s + 60);
    loop {
        if let Ok(st) = sd.read_state() {
            match st.state {
                SessionPhase::Running => return Ok(st),
                SessionPhase::Exited => {
                    let _ = child.wait();
                    return Err(SessionError::StartFailed {
                        name: spec.name.clone(),
                        reason: st.exit_reason.unwrap_or_default(),
                    });
                }
                SessionPhase::Starting => {}
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(SessionError::StartFailed {
                name: spec.name.clone(),
                reason: format!("the host process ended ({status}): {}", tail.trim()),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SessionError::StartFailed {
                name: spec.name.clone(),
                reason: "timed out".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A slice of a background process's output ([`SessionClient::proc_read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcOutput {
    pub data: Vec<u8>,
    pub next_offset: u64,
    pub truncated: bool,
    pub exit: Option<ProcExit>,
}

/// What a command that ran to its end wrote, and how it ended
/// ([`SessionClient::output`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ProcExit,
}

impl CommandOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit.code == Some(0)
    }
}

/// Most bytes of each stream [`SessionClient::output`] keeps.
const OUTPUT_CAP: usize = 1024 * 1024;

/// A connection to a running session.
#[derive(Debug)]
pub struct SessionClient {
    name: String,
    sock: PathBuf,
}

impl SessionClient {
    /// The running session `name`.
    pub fn open(home: &Path, name: &str) -> Result<SessionClient, SessionError> {
        let sd = SessionDir::new(home, name)?;
        let st = sd
            .read_state()
            .map_err(|_| SessionError::NoSuchSession(name.to_string()))?;
        if st.state != SessionPhase::Running {
            return Err(SessionError::NotRunning(name.to_string()));
        }
        Ok(SessionClient {
            name: name.to_string(),
            sock: sd.socket_path(),
        })
    }

    pub(crate) fn request(
        &self,
        req: &SessionRequest,
    ) -> Result<(UnixStream, BufReader<UnixStream>), SessionError> {
        let mut s = UnixStream::connect(&self.sock).map_err(SessionError::Connection)?;
        s.write_all(&to_line(req))
            .map_err(SessionError::Connection)?;
        let r = BufReader::new(s.try_clone().map_err(SessionError::Connection)?);
        Ok((s, r))
    }

    /// A request answered by one line.
    pub(crate) fn call(&self, req: &SessionRequest) -> Result<SessionReply, SessionError> {
        let (_s, mut r) = self.request(req)?;
        let reply = next_reply(&mut r)?.ok_or_else(|| {
            SessionError::Protocol(format!("session `{}` closed without a reply", self.name))
        })?;
        match reply {
            SessionReply::Error { code, message } => Err(SessionError::Refused { code, message }),
            other => Ok(other),
        }
    }

    /// Starts a command; with `spec.detach`, returns once it runs in the
    /// background (its pid in [`RemoteExec::pid`]).
    pub fn exec(&self, spec: ExecSpec) -> Result<RemoteExec, SessionError> {
        let (w, mut r) = self.request(&SessionRequest::Exec(spec))?;
        match next_reply(&mut r)? {
            Some(SessionReply::Started { pid }) => Ok(RemoteExec {
                pid,
                input: ExecInputSender(w),
                r,
            }),
            Some(SessionReply::Error { code, message }) => {
                Err(SessionError::Refused { code, message })
            }
            other => Err(SessionError::Protocol(format!(
                "expected started, got {other:?}"
            ))),
        }
    }

    /// Runs `spec` attached and without stdin to its end; returns its
    /// output (the first MiB of each stream) and how it ended.
    pub fn output(&self, spec: ExecSpec) -> Result<CommandOutput, SessionError> {
        let mut remote = self.exec(ExecSpec {
            stdin: false,
            detach: false,
            ..spec
        })?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let (data, into) = match remote.next_reply()? {
                Some(SessionReply::Stdout { data }) => (data, &mut stdout),
                Some(SessionReply::Stderr { data }) => (data, &mut stderr),
                Some(SessionReply::Exit {
                    code,
                    signal,
                    timed_out,
                }) => {
                    return Ok(CommandOutput {
                        stdout,
                        stderr,
                        exit: ProcExit {
                            code,
                            signal,
                            timed_out,
                        },
                    })
                }
                Some(SessionReply::Error { code, message }) => {
                    return Err(SessionError::Refused { code, message })
                }
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected output or the exit, got {other:?}"
                    )))
                }
            };
            let bytes = crate::wire::decode_bytes(&data)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            let room = OUTPUT_CAP.saturating_sub(into.len());
            into.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Sends `signal` to the background process `pid`.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<(), SessionError> {
        self.call(&SessionRequest::Signal { pid, signal })
            .map(|_| ())
    }

    /// Output of background process `pid` from byte `offset` (at most
    /// `max_bytes`, capped at [`crate::wire::MAX_PROC_READ`]): the bytes,
    /// where to read next, whether more is there, and its exit once it ended.
    pub fn proc_read(
        &self,
        pid: u32,
        offset: u64,
        max_bytes: Option<u64>,
    ) -> Result<ProcOutput, SessionError> {
        match self.call(&SessionRequest::ProcRead {
            pid,
            offset,
            max_bytes,
        })? {
            SessionReply::ProcOutput {
                data,
                next_offset,
                truncated,
                exit,
            } => Ok(ProcOutput {
                data: crate::wire::decode_bytes(&data)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?,
                next_offset,
                truncated,
                exit,
            }),
            other => Err(SessionError::Protocol(format!(
                "expected proc_output, got {other:?}"
            ))),
        }
    }

    /// Writes `bytes` to background process `pid`'s stdin (it was started
    /// with [`ExecSpec::stdin`]); `close` ends its input.
    pub fn proc_stdin(&self, pid: u32, bytes: &[u8], close: bool) -> Result<(), SessionError> {
        self.call(&SessionRequest::ProcStdin {
            pid,
            data: encode_bytes(bytes),
            close,
        })
        .map(|_| ())
    }

    /// Waits until background process `pid` ends and says how.
    pub fn proc_wait(&self, pid: u32) -> Result<ProcExit, SessionError> {
        match self.call(&SessionRequest::ProcWait { pid })? {
            SessionReply::Exit {
                code,
                signal,
                timed_out,
            } => Ok(ProcExit {
                code,
                signal,
                timed_out,
            }),
            other => Err(SessionError::Protocol(format!(
                "expected exit, got {other:?}"
            ))),
        }
    }

    /// The guest console's last `lines` lines.
    pub fn logs(&self, lines: usize) -> Result<String, SessionError> {
        match self.call(&SessionRequest::Logs { lines })? {
            SessionReply::Logs { text } => Ok(text),
            other => Err(SessionError::Protocol(format!(
                "expected logs, got {other:?}"
            ))),
        }
    }

    /// Snapshots the session's VM into the new directory `path` (no command
    /// may be running in it); the session runs on.
    pub fn snapshot(&self, path: &Path) -> Result<(), SessionError> {
        self.call(&SessionRequest::Snapshot {
            path: path.to_path_buf(),
            running: false,
        })
        .map(|_| ())
    }

    /// [`SessionClient::snapshot`] while commands may run: they go on in
    /// the snapshot's guest (a session restored from it has them, without
    /// their output streams). Their streams should be quiet: output in
    /// flight at that moment is lost.
    pub fn snapshot_running(&self, path: &Path) -> Result<(), SessionError> {
        self.call(&SessionRequest::Snapshot {
            path: path.to_path_buf(),
            running: true,
        })
        .map(|_| ())
    }

    /// Asks the guest to put `balloon_mib` MiB into the session VM's memory
    /// balloon (0 empties it). Returns at once; [`Self::memory_stats`]
    /// shows how far the guest got.
    pub fn set_balloon(&self, balloon_mib: u32) -> Result<(), SessionError> {
        self.call(&SessionRequest::BalloonSet { balloon_mib })
            .map(|_| ())
    }

    /// The session VM's memory: balloon size, the guest's statistics and
    /// the host memory it holds.
    pub fn memory_stats(&self) -> Result<nook::MemoryStats, SessionError> {
        match self.call(&SessionRequest::MemoryStats)? {
            SessionReply::MemoryStats { stats } => Ok(stats),
            other => Err(SessionError::Protocol(format!(
                "expected memory_stats, got {other:?}"
            ))),
        }
    }

    /// Asks the host to shut the guest down cleanly (volumes synced).
    pub fn request_stop(&self) -> Result<(), SessionError> {
        self.call(&SessionRequest::Stop).map(|_| ())
    }
}

pub(crate) fn next_reply(
    r: &mut BufReader<UnixStream>,
) -> Result<Option<SessionReply>, SessionError> {
    let Some(line) = read_line(r).map_err(SessionError::Connection)? else {
        return Ok(None);
    };
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| SessionError::Protocol(e.to_string()))
}

/// Sends stdin, signals and resizes to an attached command; cloneable
/// across threads through [`ExecInputSender::try_clone`].
#[derive(Debug)]
pub struct ExecInputSender(UnixStream);

impl ExecInputSender {
    pub fn try_clone(&self) -> std::io::Result<ExecInputSender> {
        self.0.try_clone().map(ExecInputSender)
    }
    fn send(&mut self, m: &ExecInput) -> std::io::Result<()> {
        self.0.write_all(&to_line(m))
    }
    pub fn stdin(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send(&ExecInput::Stdin {
            data: encode_bytes(bytes),
        })
    }
    pub fn close_stdin(&mut self) -> std::io::Result<()> {
        self.send(&ExecInput::StdinClose)
    }
    pub fn signal(&mut self, signal: i32) -> std::io::Result<()> {
        self.send(&ExecInput::Signal { signal })
    }
    pub fn resize(&mut self, rows: u16, cols: u16) -> std::io::Result<()> {
        self.send(&ExecInput::Resize(nook::Winsize { rows, cols }))
    }
    /// Closes the connection both ways: the session kills the command.
    pub fn hang_up(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
    /// The reader of the command's `pipe` is gone (see
    /// [`ExecInput::CloseOutput`]).
    pub fn close_output(&mut self, pipe: nook::Pipe) -> std::io::Result<()> {
        self.send(&ExecInput::CloseOutput { pipe })
    }
}

/// Writes are stdin chunks; [`ExecInputSender::close_stdin`] ends the input.
impl Write for ExecInputSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stdin(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A command started in a session.
#[derive(Debug)]
pub struct RemoteExec {
    /// Its pid in the guest.
    pub pid: u32,
    pub input: ExecInputSender,
    pub(crate) r: BufReader<UnixStream>,
}

impl RemoteExec {
    /// The next output line or the exit (`Exit` and `Error` are last);
    /// `None` when the host closed the connection.
    pub fn next_reply(&mut self) -> Result<Option<SessionReply>, SessionError> {
        next_reply(&mut self.r)
    }
}

/// Stops session `name` cleanly and waits until its host process is gone.
pub fn stop(home: &Path, name: &str) -> Result<SessionState, SessionError> {
    let sd = SessionDir::new(home, name)?;
    let st = sd
        .read_state()
        .map_err(|_| SessionError::NoSuchSession(name.to_string()))?;
    if st.state == SessionPhase::Exited {
        return Ok(st);
    }
    SessionClient::open(home, name)?.request_stop()?;
    wait_gone(&sd, st.pid, STOP_WAIT);
    sd.read_state()
}

fn wait_gone(sd: &SessionDir, pid: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let exited = sd
            .read_state()
            .map(|s| s.state == SessionPhase::Exited)
            .unwrap_or(true);
        if exited && !host_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Removes session `name`'s directory. A running session is refused
/// unless `force`, which stops it (killing its host when it does not stop).
pub fn remove(home: &Path, name: &str, force: bool) -> Result<(), SessionError> {
    let sd = SessionDir::new(home, name)?;
    if !sd.0.exists() {
        return Err(SessionError::NoSuchSession(name.to_string()));
    }
    if let Ok(st) = sd.read_state() {
        if st.state != SessionPhase::Exited {
            if !force {
                return Err(SessionError::Running(name.to_string()));
            }
            let stopped = SessionClient::open(home, name)
                .and_then(|c| c.request_stop())
                .is_ok()
                && wait_gone(&sd, st.pid, STOP_WAIT);
            if !stopped && host_alive(st.pid) {
                // Its VM dies with it.
                if let Some(pid) = rustix::process::Pid::from_raw(st.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                wait_gone(&sd, st.pid, Duration::from_secs(5));
            }
        }
    }
    std::fs::remove_dir_all(&sd.0).map_err(|e| SessionError::io("remove", &sd.0, e))
}
