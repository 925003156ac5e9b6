//! The data pipes of one running command, flow-controlled as
//! `docs/protocol.md` describes: output is read from the command only
//! while the host has granted credit (so a slow host reader makes the
//! command block in `write`, as a full shell pipe would), and stdin is
//! granted back to the host only as the command reads it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Sender as ChanSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nook_proto::{
    Credit, CreditGate, GuestMsg, Kind, Pipe, PipeClosed, RecvWindow, WindowOverrun, STDIO_CHUNK,
};

use crate::channel::Sender;

/// After the command exits, how long an output pipe may stay idle before
/// the agent stops waiting for its end of file (a background process may
/// hold it open). A pipe that still has data, or waits for the host's
/// credit, is never cut short.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the request loop holds of a command's pipes.
#[derive(Debug)]
pub struct Pipes {
    stdout: Arc<CreditGate>,
    stderr: Arc<CreditGate>,
    stdin: Option<StdinFeed>,
}

#[derive(Debug)]
struct StdinFeed {
    chunks: ChanSender<Vec<u8>>,
    window: Arc<Mutex<RecvWindow>>,
}

impl Default for Pipes {
    fn default() -> Self {
        Pipes::new()
    }
}

impl Pipes {
    /// Pipes with fresh credit and no stdin feed yet.
    pub fn new() -> Pipes {
        Pipes {
            stdout: Arc::new(CreditGate::new()),
            stderr: Arc::new(CreditGate::new()),
            stdin: None,
        }
    }

    /// The credit gate of an output pipe.
    pub fn gate(&self, pipe: Pipe) -> Option<Arc<CreditGate>> {
        match pipe {
            Pipe::Stdout => Some(self.stdout.clone()),
            Pipe::Stderr => Some(self.stderr.clone()),
            Pipe::Stdin | Pipe::Other => None,
        }
    }

    /// The host's reader of `credit.pipe` took more.
    pub fn credit(&self, credit: Credit) {
        if let Some(gate) = self.gate(credit.pipe) {
            gate.grant(credit.bytes);
        }
    }

    /// The host's reader of `pipe` is gone: its pump closes the pipe.
    pub fn close(&self, pipe: Pipe) {
        if let Some(gate) = self.gate(pipe) {
            gate.close();
        }
    }

    /// Queues stdin bytes for the command (empty: end of input). An
    /// overrun of the window is refused, never buffered.
    pub fn feed_stdin(&self, data: Vec<u8>) -> Result<(), WindowOverrun> {
        let Some(feed) = &self.stdin else {
            return Ok(());
        };
        feed.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .receive(data.len())?;
        let _ = feed.chunks.send(data);
        Ok(())
    }

    /// Starts the thread that writes stdin frames into the command. An
    /// empty chunk closes stdin (on a tty it is ignored: the terminal's own
    /// ^D ends input there).
    pub fn start_stdin(
        &mut self,
        stream: u32,
        to: impl Write + Send + 'static,
        tty: bool,
        out: Arc<Sender>,
    ) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let window = Arc::new(Mutex::new(RecvWindow::new(Pipe::Stdin)));
        let feed_window = window.clone();
        let mut to = Some(to);
        let _ = std::thread::Builder::new()
            .name(format!("nook-stdin{stream}"))
            .spawn(move || {
                for chunk in rx {
                    let Some(w) = to.as_mut() else {
                        // The command closed its stdin: drop what still comes.
                        continue;
                    };
                    if chunk.is_empty() {
                        if !tty {
                            to = None;
                        }
                        continue;
                    }
                    if w.write_all(&chunk).is_err() {
                        to = None;
                        let closed = GuestMsg::PipeClosed(PipeClosed { pipe: Pipe::Stdin });
                        let _ = out.send(stream, &closed);
                        continue;
                    }
                    let credit = feed_window
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .consume(chunk.len());
                    if let Some(c) = credit {
                        let _ = out.send(stream, &GuestMsg::Credit(c));
                    }
                }
            });
        self.stdin = Some(StdinFeed { chunks: tx, window });
    }
}

impl Drop for Pipes {
    fn drop(&mut self) {
        // Nothing waits for credit on a stream that is gone.
        self.stdout.close();
        self.stderr.close();
    }
}

/// Tells the output pumps that the command has exited: dropping the
/// returned sender end makes the receiver ends readable (end of file).
pub fn exit_notice() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe().map_err(io::Error::from)
}

/// Copies a command's output to the host as frames of `kind`, while the
/// host grants credit. Sends on `done` when the pipe is finished: end of
/// file, the host closed it, the channel failed, or the command has
/// exited and the pipe stayed idle for [`DRAIN_GRACE`].
pub fn spawn_output(
    stream: u32,
    kind: Kind,
    from: impl Read + AsFd + Send + 'static,
    gate: Arc<CreditGate>,
    exited: OwnedFd,
    out: Arc<Sender>,
    done: ChanSender<()>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("nook-pump{stream}"))
        .spawn(move || {
            pump(stream, kind, from, &gate, &exited, &out);
            let _ = done.send(());
        });
}

fn pump(
    stream: u32,
    kind: Kind,
    mut from: impl Read + AsFd,
    gate: &CreditGate,
    exited: &OwnedFd,
    out: &Sender,
) {
    let mut buf = vec![0u8; STDIO_CHUNK];
    let mut drain_until: Option<Instant> = None;
    loop {
        let Some(credit) = gate.acquire(STDIO_CHUNK) else {
            // The host's reader is gone: closing our end gives the command
            // EPIPE/SIGPIPE on its next write.
            return;
        };
        if !wait_readable(&from, exited, &mut drain_until) {
            return;
        }
        match from.read(&mut buf[..credit]) {
            Ok(0) => return,
            Ok(n) => {
                gate.refund(credit - n);
                if out.raw(stream, kind as u8, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => gate.refund(credit),
            // A pty master reports EIO once the last slave fd closes.
            Err(_) => return,
        }
    }
}

/// Waits until `from` has data (or its end of file). After the command
/// exited (`exited` readable), waits at most until `drain_until`; returns
/// false when that passes with the pipe idle.
fn wait_readable(from: &impl AsFd, exited: &OwnedFd, drain_until: &mut Option<Instant>) -> bool {
    loop {
        let timeout = match drain_until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let exit_events = if drain_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        let mut fds = [
            PollFd::new(from.as_fd(), PollFlags::POLLIN),
            PollFd::new(exited.as_fd(), exit_events),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            // Cannot wait: let the read decide.
            Err(_) => return true,
        }
        if fds[0].any().unwrap_or(true) {
            return true;
        }
        if drain_until.is_none() && fds[1].any().unwrap_or(false) {
            *drain_until = Some(Instant::now() + DRAIN_GRACE);
        }
    }
}

/// A pty master as a readable, pollable file.
pub fn pty_reader(master: &OwnedFd) -> io::Result<File> {
    Ok(File::from(master.try_clone()?))
}
