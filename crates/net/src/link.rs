//! The link to the guest's NIC: Ethernet frames over a Unix stream, each
//! preceded by its length as a 32-bit big-endian number. This is QEMU's
//! stream-socket framing (`-netdev socket,fd=N`, also `-netdev stream`); the kvm engine's virtio-net device speaks it
//! too, so one back end serves both engines.
//!
//! ```text
//! +----------------+---------------------------+----------------+----
//! | len (u32, BE)  | Ethernet frame (len bytes)| len (u32, BE)  | ...
//! +----------------+---------------------------+----------------+----
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub use nook_proto::link::{decode_frames, encode_frame, MAX_FRAME};

/// Bytes queued toward the guest before senders are held back.
const WRITE_LIMIT: usize = 4 << 20;
/// Bytes read from the stream per turn of the loop, for fairness.
const READ_BUDGET: usize = 1 << 20;

/// The stream end of the link, with its buffers.
#[derive(Debug)]
pub(crate) struct Link {
    pub stream: mio::net::UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    wpos: usize,
    pub readable: bool,
    pub writable: bool,
    pub closed: bool,
}

impl Link {
    pub fn new(stream: mio::net::UnixStream) -> Link {
        Link {
            stream,
            rbuf: Vec::with_capacity(64 << 10),
            wbuf: Vec::with_capacity(64 << 10),
            wpos: 0,
            readable: true,
            writable: true,
            closed: false,
        }
    }

    /// Reads what the stream has (up to a budget) and appends the complete
    /// frames to `out`. Returns whether the budget ran out with data left.
    pub fn read_frames(&mut self, out: &mut VecDeque<Vec<u8>>) -> bool {
        let mut total = 0;
        let mut chunk = [0u8; 64 << 10];
        while self.readable && !self.closed {
            if total >= READ_BUDGET {
                return true;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    total += n;
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    match decode_frames(&self.rbuf, out) {
                        Some(used) => {
                            self.rbuf.drain(..used);
                        }
                        None => {
                            tracing::warn!("net: the NIC sent a frame length over {MAX_FRAME}: closing the link");
                            self.closed = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        false
    }

    /// Whether another frame may be queued.
    pub fn has_room(&self) -> bool {
        self.wbuf.len() - self.wpos < WRITE_LIMIT
    }

    /// Queues a frame toward the guest (dropped when the link is full or
    /// closed, as a NIC drops).
    pub fn queue(&mut self, frame: &[u8]) -> bool {
        if self.closed || !self.has_room() {
            return false;
        }
        encode_frame(frame, &mut self.wbuf);
        true
    }

    /// Room for one frame of `len` bytes at the end of the write buffer.
    fn reserve(&mut self, len: usize) -> &mut [u8] {
        self.wbuf.extend_from_slice(&(len as u32).to_be_bytes());
        let start = self.wbuf.len();
        self.wbuf.resize(start + len, 0);
        &mut self.wbuf[start..]
    }

    /// Writes queued frames until the stream would block.
    pub fn flush(&mut self) {
        while self.writable && self.wpos < self.wbuf.len() && !self.closed {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => self.closed = true,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > (1 << 20) {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
    }
}

/// smoltcp's view of the link: frames the classifier passed on, and the
/// link's write buffer.
pub(crate) struct Wire<'a> {
    pub rx: &'a mut VecDeque<Vec<u8>>,
    pub link: &'a mut Link,
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a>(&'a mut Link);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        f(self.0.reserve(len))
    }
}

impl phy::Device for Wire<'_> {
    type RxToken<'b>
        = RxToken
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        if !self.link.has_room() {
            return None;
        }
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(self.link)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.link.has_room() && !self.link.closed).then_some(TxToken(self.link))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
}
