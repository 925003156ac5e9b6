//! The host end of the agent channel: one reader thread demultiplexes
//! frames to per-exec event queues; senders write whole frames under a lock.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nook_proto::{
    write_frame, Decoder, ErrorReply, Exited, Frame, GuestHello, GuestMsg, HostHello, HostMsg,
    CONTROL_STREAM, PROTOCOL_VERSION,
};

use crate::error::{BootFailure, ChannelLoss, ProtocolViolation, VmError};

/// What an exec stream receives from the guest.
#[derive(Debug, Clone)]
pub enum Event {
    Started(u32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exited),
    Error(ErrorReply),
    /// The channel to the agent broke (the VM died or misbehaved).
    Lost(ChannelLoss),
}

#[derive(Debug, Default)]
struct Routes {
    streams: HashMap<u32, Sender<Event>>,
    lost: Option<ChannelLoss>,
}

/// A live, handshaken connection to the agent.
#[derive(Debug)]
pub struct Conn {
    writer: Mutex<UnixStream>,
    routes: Arc<Mutex<Routes>>,
    next_stream: AtomicU32,
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
            hello,
        }
    }

    /// Starts the thread that routes the agent's frames to exec streams.
    fn start_reader(self, reader: FrameSource) -> Result<Arc<Conn>, VmError> {
        let routes = self.routes.clone();
        std::thread::Builder::new()
            .name("nook-chan".into())
            .spawn(move || read_loop(reader, routes))
            .map_err(VmError::Channel)?;
        Ok(Arc::new(self))
    }

    /// Reconnects to the agent of a restored VM: it already said hello
    /// (recorded in the snapshot) and is waiting for requests.
    pub fn resume(
        stream: UnixStream,
        hello: GuestHello,
        reader: FrameSource,
    ) -> Result<Arc<Conn>, VmError> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(VmError::VersionMismatch {
                agent: hello.protocol,
                host: PROTOCOL_VERSION,
            });
        }
        Conn::new(stream, hello).start_reader(reader)
    }

    /// Opens a new stream and returns its id and event queue.
    pub fn open_stream(&self) -> Result<(u32, Receiver<Event>), VmError> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &routes.lost {
            return Err(VmError::ChannelLost(why.clone()));
        }
        routes.streams.insert(id, tx);
        Ok((id, rx))
    }

    pub fn close_stream(&self, id: u32) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .remove(&id);
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

fn read_loop(mut reader: FrameSource, routes: Arc<Mutex<Routes>>) {
    let why = loop {
        let frame = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => break ChannelLoss::Closed,
            Err(e) => break ChannelLoss::io(e),
        };
        let event = match GuestMsg::from_frame(&frame) {
            Ok(GuestMsg::Started(s)) => Event::Started(s.pid),
            Ok(GuestMsg::Stdout(b)) => Event::Stdout(b),
            Ok(GuestMsg::Stderr(b)) => Event::Stderr(b),
            Ok(GuestMsg::Exit(s)) => Event::Exit(s),
            Ok(GuestMsg::Error(e)) => Event::Error(e),
            Ok(GuestMsg::Hello(_)) => continue,
            Err(e) => {
                tracing::debug!("nook-chan: ignoring frame on stream {}: {e}", frame.stream);
                continue;
            }
        };
        let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = routes.streams.get(&frame.stream) {
            let _ = tx.send(event);
        }
    };
    let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
    for tx in routes.streams.values() {
        let _ = tx.send(Event::Lost(why.clone()));
    }
    routes.lost = Some(why);
}
