//! The host end of the agent channel: one reader thread demultiplexes
//! frames to per-exec event queues; senders write whole frames under a lock.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nook_proto::{
    write_frame, Credit, CreditGate, Decoder, DesktopReply, ErrorReply, Exited, FileReply, Frame,
    GuestHello, GuestMsg, HostHello, HostMsg, Pipe, RecvWindow, WindowOverrun, CONTROL_STREAM,
    PROTOCOL_VERSION,
};

use crate::ending::{self, SharedMachine, WatchedMachine};
use crate::error::{BootFailure, ChannelLoss, ProtocolViolation, VmError};

/// What an exec stream receives from the guest.
#[derive(Debug, Clone)]
pub enum Event {
    Started(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exited),
    Error(ErrorReply),
    /// Bytes of a file being read.
    FileContent(Vec<u8>),
    /// A file operation succeeded.
    FileDone(FileReply),
    /// Bytes of the PNG a desktop action produced.
    DesktopImage(Vec<u8>),
    /// A desktop action succeeded.
    DesktopDone(DesktopReply),
    /// The channel to the agent broke (the VM died or misbehaved).
    Lost(ChannelLoss),
    /// The agent overran a window on this stream: its data is dropped.
    Overrun(Pipe, WindowOverrun),
}

/// Flow control of one exec stream (see `docs/protocol.md`): the stdin
/// credit the agent granted, and the host's windows on stdout and stderr.
/// Shared by the reader thread, the [`crate::Child`] and its stdin.
#[derive(Debug)]
pub struct StreamFlow {
    /// Credit for stdin; closed once the command's stdin or the stream ends.
    pub stdin: CreditGate,
    windows: Mutex<OutputWindows>,
}

#[derive(Debug)]
struct OutputWindows {
    stdout: RecvWindow,
    stderr: RecvWindow,
    /// Output pipes whose reader is gone: their data is dropped.
    stdout_closed: bool,
    stderr_closed: bool,
}

impl StreamFlow {
    fn new() -> StreamFlow {
        StreamFlow {
            stdin: CreditGate::new(),
            windows: Mutex::new(OutputWindows {
                stdout: RecvWindow::new(Pipe::Stdout),
                stderr: RecvWindow::new(Pipe::Stderr),
                stdout_closed: false,
                stderr_closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputWindows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accounts for output that arrived; `Ok(false)` when its pipe was
    /// closed by the host (the data is dropped).
    fn receive(&self, pipe: Pipe, bytes: usize) -> Result<bool, WindowOverrun> {
        let mut w = self.lock();
        match pipe {
            Pipe::Stdout => w.stdout.receive(bytes).map(|_| !w.stdout_closed),
            _ => w.stderr.receive(bytes).map(|_| !w.stderr_closed),
        }
    }

    /// The host's reader took `bytes` of output: the credit to send back,
    /// once a batch has been consumed.
    pub fn consume(&self, pipe: Pipe, bytes: usize) -> Option<Credit> {
        let mut w = self.lock();
        match pipe {
            Pipe::Stdout => w.stdout.consume(bytes),
            _ => w.stderr.consume(bytes),
        }
    }

    /// Marks an output pipe closed: what still arrives on it is dropped.
    pub fn close_output(&self, pipe: Pipe) {
        let mut w = self.lock();
        match pipe {
            Pipe::Stdout => w.stdout_closed = true,
            _ => w.stderr_closed = true,
        }
    }
}

#[derive(Debug)]
struct Route {
    events: Sender<Event>,
    flow: Arc<StreamFlow>,
}

#[derive(Debug, Default)]
struct Routes {
    streams: HashMap<u32, Route>,
    lost: Option<ChannelLoss>,
}

/// A live, handshaken connection to the agent.
#[derive(Debug)]
pub struct Conn {
    writer: Mutex<UnixStream>,
    routes: Arc<Mutex<Routes>>,
    next_stream: AtomicU32,
    /// The machine behind the channel, once the VM exists: asked how the
    /// guest ended when the channel breaks. Weak: the VM owns its machine
    /// (a machine may hold the channel's other end, and a pool reuses what
    /// a dropped machine gives back).
    machine: Arc<OnceLock<WatchedMachine>>,
    pub hello: GuestHello,
}

/// Frames read from a socket through an incremental decoder, so that a
/// read timeout never loses a partly received frame.
#[derive(Debug)]
pub struct FrameSource {
    sock: UnixStream,
    dec: Decoder,
    buf: Vec<u8>,
}

impl FrameSource {
    pub fn new(sock: UnixStream) -> FrameSource {
        FrameSource {
            sock,
            dec: Decoder::new(),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// Next frame; `Ok(None)` at end of stream. With a read timeout set on
    /// the socket, `Err(WouldBlock/TimedOut)` means nothing complete arrived yet.
    pub fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let n = match self.sock.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                if self.dec.pending() > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "channel closed inside a frame",
                    ));
                }
                return Ok(None);
            }
            self.dec.push(&self.buf[..n]);
        }
    }
}

/// The outcome of waiting for the agent's hello.
#[derive(Debug)]
pub enum Greeting {
    Hello(GuestHello, FrameSource),
    /// The machine ended, the boot was cancelled or the deadline passed first.
    Failed(BootFailure),
}

/// Reads the agent's hello, polling `alive` between read timeouts so a VM
/// that dies during boot (or a cancelled boot) is noticed at once. `timeout`
/// is how long to wait in all.
pub fn await_hello(
    stream: &UnixStream,
    timeout: Duration,
    mut alive: impl FnMut() -> Option<BootFailure>,
) -> Result<Greeting, VmError> {
    let deadline = Instant::now() + timeout;
    let mut source = FrameSource::new(stream.try_clone().map_err(VmError::Channel)?);
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(VmError::Channel)?;
    let frame = loop {
        match source.next() {
            Ok(Some(f)) => break f,
            Ok(None) => return Ok(Greeting::Failed(BootFailure::ChannelClosed)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(why) = alive() {
                    return Ok(Greeting::Failed(why));
                }
                if Instant::now() > deadline {
                    return Ok(Greeting::Failed(BootFailure::NotReady(timeout)));
                }
            }
            Err(e) => return Err(VmError::Protocol(ProtocolViolation::Hello(e))),
        }
    };
    stream.set_read_timeout(None).map_err(VmError::Channel)?;
    let violation = match GuestMsg::from_frame(&frame) {
        Ok(GuestMsg::Hello(h)) if frame.stream == CONTROL_STREAM => {
            return Ok(Greeting::Hello(h, source))
        }
        Ok(GuestMsg::Hello(_)) => ProtocolViolation::HelloStream(frame.stream),
        Ok(GuestMsg::Error(e)) => ProtocolViolation::Refused { message: e.message },
        Ok(other) => ProtocolViolation::Unexpected {
            expected: "the agent's hello",
            got: other.kind(),
        },
        Err(e) => ProtocolViolation::Message(e),
    };
    Err(VmError::Protocol(violation))
}

impl Conn {
    /// Completes the handshake (failing closed on a version mismatch) and
    /// starts the reader thread.
    pub fn establish(
        stream: UnixStream,
        hello: GuestHello,
        reader: FrameSource,
    ) -> Result<Arc<Conn>, VmError> {
        if hello.protocol != PROTOCOL_VERSION {
            let _ = write_frame(
                &mut &stream,
                CONTROL_STREAM,
                HostMsg::Shutdown.kind() as u8,
                &[],
            );
            return Err(VmError::VersionMismatch {
                agent: hello.protocol,
                host: PROTOCOL_VERSION,
            });
        }
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64);
        let conn = Conn::new(stream, hello);
        conn.send(
            CONTROL_STREAM,
            &HostMsg::Hello(HostHello {
                protocol: PROTOCOL_VERSION,
                time_ns,
            }),
        )?;
        conn.start_reader(reader)
    }

    fn new(stream: UnixStream, hello: GuestHello) -> Conn {
        Conn {
            writer: Mutex::new(stream),
            routes: Arc::new(Mutex::new(Routes::default())),
            next_stream: AtomicU32::new(1),
            machine: Arc::new(OnceLock::new()),
            hello,
        }
    }

    /// Starts the thread that routes the agent's frames to exec streams.
    fn start_reader(self, reader: FrameSource) -> Result<Arc<Conn>, VmError> {
        let routes = self.routes.clone();
        let machine = self.machine.clone();
        std::thread::Builder::new()
            .name("nook-chan".into())
            .spawn(move || read_loop(reader, routes, &machine))
            .map_err(VmError::Channel)?;
        Ok(Arc::new(self))
    }

    /// Names the machine behind the channel (once), so that commands that
    /// lose the channel learn how the guest ended.
    pub(crate) fn watch(&self, machine: &SharedMachine) {
        let _ = self.machine.set(Arc::downgrade(machine));
    }

    /// The guest console's last lines (empty without a live machine).
    pub(crate) fn console(&self) -> String {
        self.machine
            .get()
            .and_then(Weak::upgrade)
            .map(|m| ending::console(&m))
            .unwrap_or_default()
    }

    /// Reconnects to the agent of a restored VM: it already said hello
    /// (recorded in the snapshot) and is waiting for requests.
    /// Stream ids from `next_stream` on are free in the guest.
    pub fn resume(
        stream: UnixStream,
        hello: GuestHello,
        reader: FrameSource,
        next_stream: u32,
    ) -> Result<Arc<Conn>, VmError> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(VmError::VersionMismatch {
                agent: hello.protocol,
                host: PROTOCOL_VERSION,
            });
        }
        let conn = Conn::new(stream, hello);
        conn.next_stream
            .store(next_stream.max(1), Ordering::Relaxed);
        conn.start_reader(reader)
    }

    /// The next stream id this host would open.
    pub fn next_stream(&self) -> u32 {
        self.next_stream.load(Ordering::Relaxed)
    }

    /// Opens a new stream and returns its id, event queue and flow control.
    pub fn open_stream(&self) -> Result<(u32, Receiver<Event>, Arc<StreamFlow>), VmError> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        let flow = Arc::new(StreamFlow::new());
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &routes.lost {
            return Err(VmError::ChannelLost(why.clone()));
        }
        let route = Route {
            events: tx,
            flow: flow.clone(),
        };
        routes.streams.insert(id, route);
        Ok((id, rx, flow))
    }

    pub fn close_stream(&self, id: u32) {
        let route = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .remove(&id);
        if let Some(r) = route {
            r.flow.stdin.close();
        }
    }

    pub fn send(&self, stream: u32, msg: &HostMsg) -> Result<(), VmError> {
        let frame = msg.to_frame(stream);
        self.send_raw(stream, frame.kind, &frame.payload)
    }

    pub fn send_raw(&self, stream: u32, kind: u8, payload: &[u8]) -> Result<(), VmError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *w, stream, kind, payload)
            .map_err(|e| VmError::ChannelLost(ChannelLoss::Send(Arc::new(e))))
    }
}

fn read_loop(
    mut reader: FrameSource,
    routes: Arc<Mutex<Routes>>,
    machine: &OnceLock<WatchedMachine>,
) {
    let why = loop {
        let frame = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => break ChannelLoss::Closed,
            Err(e) => break ChannelLoss::io(e),
        };
        match GuestMsg::from_frame(&frame) {
            Ok(msg) => route(&routes, frame.stream, msg),
            Err(e) => {
                tracing::debug!("nook-chan: ignoring frame on stream {}: {e}", frame.stream);
            }
        }
    };
    // The channel breaks when the guest ends: say how it ended.
    let machine = machine.get().and_then(Weak::upgrade);
    let why = match machine.and_then(|m| ending::ended(&m, ending::EXIT_GRACE)) {
        Some(ended) => ChannelLoss::GuestEnded(Arc::new(ended)),
        None => why,
    };
    let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
    for r in routes.streams.values() {
        r.flow.stdin.close();
        let _ = r.events.send(Event::Lost(why.clone()));
    }
    routes.lost = Some(why);
}

/// Delivers one message of the agent to its stream. Output is checked
/// against the stream's windows: an agent that overruns one breaks that
/// stream (its data is dropped, never buffered).
fn route(routes: &Mutex<Routes>, stream: u32, msg: GuestMsg) {
    let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
    let Some(r) = routes.streams.get(&stream) else {
        return;
    };
    let (pipe, bytes) = match &msg {
        GuestMsg::Stdout(b) => (Pipe::Stdout, b.len()),
        GuestMsg::Stderr(b) => (Pipe::Stderr, b.len()),
        _ => (Pipe::Other, 0),
    };
    let event = match msg {
        GuestMsg::Started(s) => Event::Started(s.pid),
        GuestMsg::Stdout(b) | GuestMsg::Stderr(b) => match r.flow.receive(pipe, bytes) {
            Ok(true) if pipe == Pipe::Stdout => Event::Stdout(b),
            Ok(true) => Event::Stderr(b),
            Ok(false) => return,
            Err(e) => {
                let r = routes.streams.remove(&stream);
                if let Some(r) = r {
                    r.flow.stdin.close();
                    let _ = r.events.send(Event::Overrun(pipe, e));
                }
                return;
            }
        },
        GuestMsg::Exit(s) => {
            r.flow.stdin.close();
            Event::Exit(s)
        }
        GuestMsg::Error(e) => {
            r.flow.stdin.close();
            Event::Error(e)
        }
        // A file read asks for one window at a time: its size is bounded.
        GuestMsg::FileContent(b) => Event::FileContent(b),
        GuestMsg::FileDone(reply) => Event::FileDone(reply),
        // One image per request, of a size the screen bounds.
        GuestMsg::DesktopImage(b) => Event::DesktopImage(b),
        GuestMsg::DesktopDone(reply) => Event::DesktopDone(reply),
        GuestMsg::Credit(c) if c.pipe == Pipe::Stdin => return r.flow.stdin.grant(c.bytes),
        GuestMsg::PipeClosed(c) if c.pipe == Pipe::Stdin => return r.flow.stdin.close(),
        GuestMsg::Credit(_) | GuestMsg::PipeClosed(_) | GuestMsg::Hello(_) => return,
    };
    let _ = r.events.send(event);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A test double of the guest: says hello on `guest`, then the host's
    /// side is established and an exec stream opened.
    fn established(guest: &mut UnixStream, host: UnixStream) -> (Arc<Conn>, u32, Receiver<Event>) {
        let hello = GuestHello {
            protocol: PROTOCOL_VERSION,
            agent_version: "double".into(),
            kernel_release: String::new(),
            features: Vec::new(),
        };
        let frame = GuestMsg::Hello(hello).to_frame(CONTROL_STREAM);
        guest.write_all(&frame.encode().unwrap()).unwrap();
        let Greeting::Hello(h, source) =
            await_hello(&host, Duration::from_secs(5), || None).expect("hello from the double")
        else {
            panic!("no hello");
        };
        let conn = Conn::establish(host, h, source).unwrap();
        let (id, events, _flow) = conn.open_stream().unwrap();
        (conn, id, events)
    }

    #[test]
    fn garbage_frames_from_the_guest_are_ignored_and_an_oversize_one_ends_the_channel() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let (_conn, id, events) = established(&mut guest, host);
        // Garbage: unknown kinds and payloads that are not the message
        // their kind says, on known and unknown streams.
        for (stream, kind, payload) in [
            (id, 0xee_u8, &b"??"[..]),
            (id, nook_proto::Kind::Exit as u8, &b"{not json"[..]),
            (9999, 6, &b"stdout for nobody"[..]),
        ] {
            write_frame(&mut guest, stream, kind, payload).unwrap();
        }
        // Still serving: a well-formed frame after the garbage arrives.
        let ok = GuestMsg::Stdout(b"after garbage".to_vec()).to_frame(id);
        guest.write_all(&ok.encode().unwrap()).unwrap();
        match events.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Stdout(b) => assert_eq!(b, b"after garbage"),
            other => panic!("expected the output, got {other:?}"),
        }
        // A header claiming a 4 GiB payload: the channel is failed, nothing
        // is allocated, the exec learns it lost the guest.
        let mut header = Vec::new();
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        header.extend_from_slice(&id.to_le_bytes());
        header.push(6);
        guest.write_all(&header).unwrap();
        match events.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Lost(ChannelLoss::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}")
            }
            other => panic!("expected a lost channel, got {other:?}"),
        }
    }
}
