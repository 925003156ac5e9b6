//! Running one command for the host: spawn in its own process group (or
//! session, with a tty), pump stdio as frames, enforce the timeout, report
//! the exit.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nook_proto::{ErrorCode, ErrorReply, ExecRequest, Exited, GuestMsg, Kind, Pipe, Started};

use crate::channel::Sender;
use crate::pipes::{self, Activity, Pipes};
use crate::reaper::{kill_group, Reaper};
use crate::tty;
use crate::user::{self, Identity};

/// Base environment of every command; the request's env is applied on top.
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// What the request loop keeps of a running command.
#[derive(Debug)]
pub struct Running {
    pub pgid: i32,
    pub pipes: Pipes,
    pub pty: Option<Arc<OwnedFd>>,
}

impl Running {
    pub fn signal(&self, sig: i32) {
        if let Ok(sig) = Signal::try_from(sig) {
            kill_group(self.pgid, sig);
        }
    }
}

fn reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

/// Starts `req` on `stream`. On success the command runs on its own threads
/// and `on_done` is called once its `Exit` frame has been sent.
pub fn start(
    stream: u32,
    req: ExecRequest,
    out: Arc<Sender>,
    reaper: &Reaper,
    on_done: impl FnOnce() + Send + 'static,
) -> Result<Running, ErrorReply> {
    let Some(program) = req.argv.first() else {
        return Err(reply(ErrorCode::BadRequest, "empty command"));
    };
    let identity = match req.user.as_deref() {
        Some(spec) => Some(user::resolve_here(spec).map_err(|m| reply(ErrorCode::BadRequest, m))?),
        None => None,
    };
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]).env_clear();
    for (k, v) in BASE_ENV {
        cmd.env(k, v);
    }
    if let Some(id) = &identity {
        cmd.env("HOME", &id.home);
    }
    if req.tty.is_some() {
        cmd.env("TERM", "xterm-256color");
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    let cwd = req.cwd.as_deref().unwrap_or("/");
    if !std::path::Path::new(cwd).is_dir() {
        return Err(reply(
            ErrorCode::BadRequest,
            format!("working directory {cwd} does not exist in the guest"),
        ));
    }
    cmd.current_dir(cwd);

    let pty = match req.tty {
        Some(ws) => Some(
            tty::attach(&mut cmd, ws)
                .map_err(|e| reply(ErrorCode::Internal, format!("cannot open a pty: {e}")))?,
        ),
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
            None
        }
    };

    if let Some(id) = identity {
        switch_user(&mut cmd, id);
    }

    let (mut child, status_rx) = reaper
        .spawn(&mut cmd)
        .map_err(|e| spawn_error(program, &e))?;
    // Drop the command now: it holds the parent's copies of the pty slave.
    drop(cmd);
    let pid = child.id() as i32;
    let _ = out.send(stream, &GuestMsg::Started(Started { pid: pid as u32 }));

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let internal = |e: io::Error| reply(ErrorCode::Internal, e.to_string());
    let activity = Arc::new(Activity::default());
    let mut pipes = Pipes::new();
    let output = |kind: Kind, pipe: Pipe, from: File| -> Result<(), ErrorReply> {
        let gate = pipes
            .gate(pipe)
            .ok_or_else(|| internal(io::ErrorKind::InvalidInput.into()))?;
        let (activity, done) = (activity.clone(), done_tx.clone());
        pipes::spawn_output(stream, kind, from, gate, activity, out.clone(), done);
        Ok(())
    };
    let pty = match pty {
        Some(master) => {
            output(
                Kind::Stdout,
                Pipe::Stdout,
                pipes::pty_reader(&master).map_err(internal)?,
            )?;
            let writer = pipes::pty_reader(&master).map_err(internal)?;
            pipes.start_stdin(stream, writer, true, out.clone());
            Some(Arc::new(master))
        }
        None => {
            if let Some(o) = child.stdout.take() {
                output(Kind::Stdout, Pipe::Stdout, File::from(OwnedFd::from(o)))?;
            }
            if let Some(e) = child.stderr.take() {
                output(Kind::Stderr, Pipe::Stderr, File::from(OwnedFd::from(e)))?;
            }
            if let Some(i) = child.stdin.take() {
                pipes.start_stdin(stream, i, false, out.clone());
            }
            None
        }
    };
    drop(done_tx);

    let timeout = req.timeout_ms.map(Duration::from_millis);
    let waiter_out = out.clone();
    let spawned = thread::Builder::new()
        .name(format!("nook-exec{stream}"))
        .spawn(move || {
            let (status, timed_out) = wait_for(pid, &status_rx, timeout);
            // Let the pumps deliver what the command wrote before it ended.
            activity.drain(&done_rx);
            let mut exit = exit_status(status);
            exit.timed_out = timed_out;
            let _ = waiter_out.send(stream, &GuestMsg::Exit(exit));
            on_done();
        });
    if let Err(e) = spawned {
        kill_group(pid, Signal::SIGKILL);
        return Err(reply(
            ErrorCode::Internal,
            format!("cannot start waiter thread: {e}"),
        ));
    }
    Ok(Running {
        pgid: pid,
        pipes,
        pty,
    })
}

/// Makes the child drop to `id` (groups, then gid, then uid) just before
/// it executes the program.
fn switch_user(cmd: &mut Command, id: Identity) {
    let groups: Vec<libc::gid_t> = id.groups;
    let (uid, gid) = (id.uid, id.gid);
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes async-signal-safe system calls on memory allocated before the
    // fork (the groups vector moved into it) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits for the command's status, killing its process group at the timeout.
fn wait_for(
    pid: i32,
    rx: &Receiver<WaitStatus>,
    timeout: Option<Duration>,
) -> (Option<WaitStatus>, bool) {
    if let Some(t) = timeout {
        match rx.recv_timeout(t) {
            Ok(st) => return (Some(st), false),
            Err(RecvTimeoutError::Disconnected) => return (None, false),
            Err(RecvTimeoutError::Timeout) => {
                kill_group(pid, Signal::SIGKILL);
                return (rx.recv().ok(), true);
            }
        }
    }
    (rx.recv().ok(), false)
}

fn exit_status(st: Option<WaitStatus>) -> Exited {
    match st {
        Some(WaitStatus::Exited(_, code)) => Exited {
            code: Some(code),
            ..Default::default()
        },
        Some(WaitStatus::Signaled(_, sig, _)) => Exited {
            signal: Some(sig as i32),
            ..Default::default()
        },
        _ => Exited::default(),
    }
}

fn spawn_error(program: &str, e: &io::Error) -> ErrorReply {
    match e.raw_os_error() {
        Some(libc::ENOENT) => reply(ErrorCode::NotFound, format!("{program}: command not found")),
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => reply(
            ErrorCode::NotExecutable,
            format!("{program}: cannot execute: {e}"),
        ),
        _ => reply(ErrorCode::Internal, format!("{program}: cannot start: {e}")),
    }
}
