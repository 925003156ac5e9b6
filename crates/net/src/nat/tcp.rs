//! TCP through the NAT: guest connections end in smoltcp sockets and are
//! proxied to ordinary host sockets; published ports go the other way.
//!
//! A guest SYN is held until the host connection is up: only then does a
//! smoltcp socket listen on the destination and take the SYN, so the guest
//! sees a refused or unreachable host as a reset, as it would on a real
//! network. Retransmitted SYNs of a pending connection are dropped.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use super::{Listener, Nat};
use crate::config::{GATEWAY_IP, GUEST_IP};
use crate::metrics::NetMetrics;

/// smoltcp buffer sizes per connection (allocated lazily by the kernel:
/// untouched pages cost nothing).
const RX_BUFFER: usize = 256 << 10;
const TX_BUFFER: usize = 256 << 10;
/// A host connection still not up after this is given up (the guest gets
/// a reset).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes moved per flow per turn, for fairness between flows.
const PUMP_BUDGET: usize = 1 << 20;
/// The gateway's ports for connections to published ports.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A guest connection: its port and where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub guest_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

#[derive(Debug)]
struct Pending {
    key: FlowKey,
    stream: mio::net::TcpStream,
    syn: Vec<u8>,
    started: Instant,
    ready: bool,
}

#[derive(Debug)]
struct Flow {
    handle: SocketHandle,
    stream: mio::net::TcpStream,
    key: Option<FlowKey>,
    /// The gateway port of a published-port connection.
    local_port: Option<u16>,
    readable: bool,
    writable: bool,
    host_eof: bool,
    shut_wr: bool,
    /// Seen closed once: removed after smoltcp had a turn to send its
    /// reset or last ACK.
    closed_seen: bool,
}

/// The TCP flows of one VM.
#[derive(Debug, Default)]
pub(crate) struct TcpTable {
    flows: HashMap<Token, Flow>,
    by_key: HashMap<FlowKey, Token>,
    pending: HashMap<Token, Pending>,
    next_port: u16,
}

impl TcpTable {
    /// Marks readiness of a flow's host socket; false if not a TCP token.
    pub fn on_event(&mut self, token: Token, readable: bool, writable: bool) -> bool {
        if let Some(f) = self.flows.get_mut(&token) {
            f.readable |= readable;
            f.writable |= writable;
            true
        } else if let Some(p) = self.pending.get_mut(&token) {
            p.ready = true;
            true
        } else {
            false
        }
    }

    /// When the oldest pending connection times out.
    pub fn next_deadline(&self) -> Duration {
        self.pending
            .values()
            .map(|p| CONNECT_TIMEOUT.saturating_sub(p.started.elapsed()))
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn next_local_port(&mut self) -> u16 {
        let span = EPHEMERAL.end() - EPHEMERAL.start() + 1;
        self.next_port = (self.next_port + 1) % span;
        EPHEMERAL.start() + self.next_port
    }
}

fn new_socket() -> Socket<'static> {
    let mut s = Socket::new(
        SocketBuffer::new(vec![0; RX_BUFFER]),
        SocketBuffer::new(vec![0; TX_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

impl Nat {
    /// A guest SYN: a retransmission, a new allowed connection (held until
    /// the host side is up) or a refused one (smoltcp resets it).
    pub(super) fn tcp_syn(&mut self, frame: Vec<u8>, src_port: u16, dst: Ipv4Addr, dst_port: u16) {
        let key = FlowKey {
            guest_port: src_port,
            dst,
            dst_port,
        };
        if let Some(token) = self.tcp.by_key.get(&key) {
            if self.tcp.flows.contains_key(token) {
                self.rx.push_back(frame);
            }
            // Pending: the SYN is already held.
            return;
        }
        let target = match self.destination(dst, dst_port) {
            Ok(d) => d,
            Err(why) => {
                self.refuse("tcp", dst, dst_port, &why);
                // No socket listens: smoltcp answers with a reset.
                self.rx.push_back(frame);
                return;
            }
        };
        let addr = SocketAddr::V4(SocketAddrV4::new(target.ip, target.port));
        let mut stream = match mio::net::TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("net: tcp to {addr} failed at once: {e}");
                self.rx.push_back(frame);
                return;
            }
        };
        let token = self.token();
        if !self.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            self.rx.push_back(frame);
            return;
        }
        self.tcp.by_key.insert(key, token);
        self.tcp.pending.insert(
            token,
            Pending {
                key,
                stream,
                syn: frame,
                started: Instant::now(),
                ready: false,
            },
        );
    }

    /// Settles pending connections whose host side answered or timed out.
    pub(super) fn tcp_connects(&mut self) {
        let settled: Vec<Token> = self
            .tcp
            .pending
            .iter()
            .filter(|(_, p)| p.ready || p.started.elapsed() >= CONNECT_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for token in settled {
            let Some(mut p) = self.tcp.pending.remove(&token) else {
                continue;
            };
            let connected = match p.stream.take_error() {
                Ok(None) => match p.stream.peer_addr() {
                    Ok(_) => true,
                    Err(e)
                        if e.kind() == ErrorKind::NotConnected
                            && p.started.elapsed() < CONNECT_TIMEOUT =>
                    {
                        // Spurious wake-up: still connecting.
                        p.ready = false;
                        self.tcp.pending.insert(token, p);
                        continue;
                    }
                    Err(_) => false,
                },
                _ => false,
            };
            if !connected {
                self.tcp.by_key.remove(&p.key);
                let _ = self.poll.registry().deregister(&mut p.stream);
                // No listener: smoltcp resets the guest's connection.
                self.rx.push_back(p.syn);
                self.poll_stack();
                continue;
            }
            let mut socket = new_socket();
            let endpoint = IpListenEndpoint {
                addr: Some(p.key.dst.into()),
                port: p.key.dst_port,
            };
            if socket.listen(endpoint).is_err() {
                self.tcp.by_key.remove(&p.key);
                continue;
            }
            let handle = self.sockets.add(socket);
            // The listener takes this SYN now, before any other listener
            // on the same endpoint exists.
            self.rx.push_back(p.syn);
            self.poll_stack();
            NetMetrics::add(&self.metrics.tcp_flows, 1);
            self.tcp.flows.insert(
                token,
                Flow {
                    handle,
                    stream: p.stream,
                    key: Some(p.key),
                    local_port: None,
                    readable: true,
                    writable: true,
                    host_eof: false,
                    shut_wr: false,
                    closed_seen: false,
                },
            );
        }
    }

    /// Accepts connections on published TCP ports and opens the matching
    /// connection to the guest.
    pub(super) fn accept_published(&mut self) {
        let mut accepted = Vec::new();
        for l in &self.listeners {
            if let Listener::Tcp { socket, guest_port } = l {
                loop {
                    match socket.accept() {
                        Ok((stream, _)) => accepted.push((stream, *guest_port)),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!("net: accept on a published port failed: {e}");
                            break;
                        }
                    }
                }
            }
        }
        for (mut stream, guest_port) in accepted {
            let local = self.free_local_port();
            let mut socket = new_socket();
            let remote = IpEndpoint::new(GUEST_IP.into(), guest_port);
            if socket
                .connect(self.iface.context(), remote, (GATEWAY_IP, local))
                .is_err()
            {
                continue;
            }
            let token = self.token();
            if !self.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                continue;
            }
            let handle = self.sockets.add(socket);
            NetMetrics::add(&self.metrics.published_connections, 1);
            self.tcp.flows.insert(
                token,
                Flow {
                    handle,
                    stream,
                    key: None,
                    local_port: Some(local),
                    readable: true,
                    writable: true,
                    host_eof: false,
                    shut_wr: false,
                    closed_seen: false,
                },
            );
        }
    }

    fn free_local_port(&mut self) -> u16 {
        loop {
            let p = self.tcp.next_local_port();
            if !self.tcp.flows.values().any(|f| f.local_port == Some(p)) {
                return p;
            }
        }
    }

    /// Moves bytes between every flow's smoltcp socket and host socket and
    /// retires finished flows. Returns whether a flow stopped on its budget.
    pub(super) fn tcp_pump(&mut self) -> bool {
        let mut more = false;
        let mut done = Vec::new();
        for (token, f) in self.tcp.flows.iter_mut() {
            let s = self.sockets.get_mut::<Socket>(f.handle);
            more |= pump(f, s, &self.metrics);
            if matches!(s.state(), State::Closed | State::TimeWait) {
                if f.closed_seen {
                    done.push(*token);
                }
                f.closed_seen = true;
            }
        }
        for token in done {
            if let Some(mut f) = self.tcp.flows.remove(&token) {
                let _ = self.poll.registry().deregister(&mut f.stream);
                self.sockets.remove(f.handle);
                if let Some(k) = f.key {
                    self.tcp.by_key.remove(&k);
                }
            }
        }
        more
    }
}

/// One flow's turn: guest → host, the guest's FIN, host → guest.
fn pump(f: &mut Flow, s: &mut Socket<'static>, metrics: &NetMetrics) -> bool {
    let mut moved = 0usize;
    while f.writable && s.can_recv() && moved < PUMP_BUDGET {
        let stream = &mut f.stream;
        match s.recv(|buf| match stream.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(n)) => {
                moved += n;
                NetMetrics::add(&metrics.bytes_out, n as u64);
            }
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => f.writable = false,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(_)) => {
                s.abort();
                return false;
            }
            Err(_) => break,
        }
    }
    let guest_done = matches!(
        s.state(),
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    );
    if guest_done && !s.can_recv() && !f.shut_wr {
        let _ = f.stream.shutdown(Shutdown::Write);
        f.shut_wr = true;
    }
    if s.state() == State::Closed && !f.closed_seen {
        // The guest reset (or never accepted) the connection.
        let _ = f.stream.shutdown(Shutdown::Both);
    }
    let mut sent = 0usize;
    while f.readable && !f.host_eof && s.can_send() && sent < PUMP_BUDGET {
        let stream = &mut f.stream;
        match s.send(|buf| match stream.read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) => {
                f.host_eof = true;
                s.close();
            }
            Ok(Ok(n)) => {
                sent += n;
                NetMetrics::add(&metrics.bytes_in, n as u64);
            }
            Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => f.readable = false,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(_)) => {
                s.abort();
                break;
            }
            Err(_) => break,
        }
    }
    (f.writable && s.can_recv() && moved >= PUMP_BUDGET)
        || (f.readable && !f.host_eof && s.can_send() && sent >= PUMP_BUDGET)
}
