//! The data pipes of one running command, flow-controlled as
//! `docs/protocol.md` describes: output is read from the command only
//! while the host has granted credit (so a slow host reader makes the
//! command block in `write`, as a full shell pipe would), and stdin is
//! granted back to the host only as the command reads it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender as ChanSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nook_proto::{
    Credit, CreditGate, GuestMsg, Kind, Pipe, PipeClosed, RecvWindow, WindowOverrun, STDIO_CHUNK,
};

use crate::channel::Sender;

/// After the command exits, how long its output pipes may stay idle before
/// the agent stops waiting for their end of file (a background process may
/// hold them open). A pipe that still has data, or waits for the host's
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

/// How the output pumps of one command are doing: bytes read so far and
/// how many pumps wait for the host's credit. After the command exits,
/// the agent waits for its pumps as long as they make progress or wait
/// for credit; a pump idle for [`DRAIN_GRACE`] is left behind.
#[derive(Debug, Default)]
pub struct Activity {
    bytes: AtomicU64,
    waiting: AtomicUsize,
}

impl Activity {
    /// Waits until every pump has sent on `done` and dropped it, or the
    /// pumps left stay idle (no bytes, no wait for credit) for [`DRAIN_GRACE`].
    pub fn drain(&self, done: &Receiver<()>) {
        let mut seen = self.bytes.load(Ordering::Relaxed);
        loop {
            match done.recv_timeout(DRAIN_GRACE) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.bytes.load(Ordering::Relaxed);
                    if now == seen && self.waiting.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    seen = now;
                }
            }
        }
    }
}

/// Copies a command's output to the host as frames of `kind`, while the
/// host grants credit. Sends on `done` when the pipe is finished: end of
/// file, the host closed it, or the channel failed.
pub fn spawn_output(
    stream: u32,
    kind: Kind,
    from: impl Read + Send + 'static,
    gate: Arc<CreditGate>,
    activity: Arc<Activity>,
    out: Arc<Sender>,
    done: ChanSender<()>,
) {
    let _ = std::thread::Builder::new()
        .name(format!("nook-pump{stream}"))
        .spawn(move || {
            pump(stream, kind, from, &gate, &activity, &out);
            let _ = done.send(());
        });
}

fn pump(
    stream: u32,
    kind: Kind,
    mut from: impl Read,
    gate: &CreditGate,
    activity: &Activity,
    out: &Sender,
) {
    let mut buf = vec![0u8; STDIO_CHUNK];
    loop {
        activity.waiting.fetch_add(1, Ordering::Relaxed);
        let credit = gate.acquire(STDIO_CHUNK);
        activity.waiting.fetch_sub(1, Ordering::Relaxed);
        let Some(credit) = credit else {
            // The host's reader is gone: closing our end gives the command
            // EPIPE/SIGPIPE on its next write.
            return;
        };
        match from.read(&mut buf[..credit]) {
            Ok(0) => return,
            Ok(n) => {
                activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
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

/// A pty master as a file to read or write.
pub fn pty_reader(master: &OwnedFd) -> io::Result<File> {
    Ok(File::from(master.try_clone()?))
}
