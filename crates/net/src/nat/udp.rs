//! UDP through the NAT: each guest flow (its port and destination) gets a
//! connected host socket; datagrams on published UDP ports reach the guest
//! from a gateway port per host peer, and the guest's replies to that port
//! go back to the peer. Port 53 of any address is nook's DNS.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use smoltcp::wire::Icmpv4DstUnreachable;

use super::{Listener, Nat};
use crate::config::{GATEWAY_IP, GUEST_IP};
use crate::frames::udp_to_guest;
use crate::metrics::NetMetrics;

/// A UDP flow with no traffic for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Flows per VM at most; the least recently used goes first.
const MAX_FLOWS: usize = 512;
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65507;
/// Gateway ports for peers of published UDP ports.
const PEER_PORTS: std::ops::Range<u16> = 30000..40000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UdpKey {
    guest_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
}

#[derive(Debug)]
struct UdpFlow {
    key: UdpKey,
    socket: mio::net::UdpSocket,
    last: Instant,
    readable: bool,
}

/// A host peer of a published UDP port, seen from the guest as
/// `GATEWAY_IP:gateway_port`.
#[derive(Debug, Clone, Copy)]
struct Peer {
    listener: usize,
    addr: SocketAddr,
    last: Instant,
}

/// The UDP flows of one VM.
#[derive(Debug, Default)]
pub(crate) struct UdpTable {
    flows: HashMap<Token, UdpFlow>,
    by_key: HashMap<UdpKey, Token>,
    /// By gateway port.
    peers: HashMap<u16, Peer>,
    next_peer: u16,
}

impl UdpTable {
    pub fn on_event(&mut self, token: Token, readable: bool) {
        if let Some(f) = self.flows.get_mut(&token) {
            f.readable |= readable;
        }
    }

    pub fn next_deadline(&self) -> Duration {
        self.flows
            .values()
            .map(|f| IDLE.saturating_sub(f.last.elapsed()))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(100))
    }

    /// Closes idle flows and forgets idle peers.
    pub fn expire(&mut self, poll: &mio::Poll) {
        let idle: Vec<Token> = self
            .flows
            .iter()
            .filter(|(_, f)| f.last.elapsed() >= IDLE)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            self.close(poll, t);
        }
        self.peers.retain(|_, p| p.last.elapsed() < IDLE);
    }

    fn close(&mut self, poll: &mio::Poll, token: Token) {
        if let Some(mut f) = self.flows.remove(&token) {
            let _ = poll.registry().deregister(&mut f.socket);
            self.by_key.remove(&f.key);
        }
    }

    fn peer_port(&mut self, listener: usize, addr: SocketAddr) -> u16 {
        if let Some((port, p)) = self
            .peers
            .iter_mut()
            .find(|(_, p)| p.listener == listener && p.addr == addr)
        {
            p.last = Instant::now();
            return *port;
        }
        let span = PEER_PORTS.end - PEER_PORTS.start;
        loop {
            self.next_peer = (self.next_peer + 1) % span;
            let port = PEER_PORTS.start + self.next_peer;
            // With every port taken the oldest mapping is replaced.
            if !self.peers.contains_key(&port) || self.peers.len() >= span as usize {
                self.peers.insert(
                    port,
                    Peer {
                        listener,
                        addr,
                        last: Instant::now(),
                    },
                );
                return port;
            }
        }
    }
}

impl Nat {
    /// A datagram from the guest.
    pub(super) fn udp_from_guest(
        &mut self,
        frame: &[u8],
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
        payload: Vec<u8>,
    ) {
        if dst_port == 53 {
            self.dns_query(src_port, dst, &payload);
            return;
        }
        if dst == GATEWAY_IP {
            if let Some(peer) = self.udp.peers.get_mut(&dst_port) {
                peer.last = Instant::now();
                let peer = *peer;
                if let Some(Listener::Udp { socket, .. }) = self.listeners.get(peer.listener) {
                    let _ = socket.send_to(&payload, peer.addr);
                }
                return;
            }
        }
        let key = UdpKey {
            guest_port: src_port,
            dst,
            dst_port,
        };
        if let Some(token) = self.udp.by_key.get(&key).copied() {
            if let Some(f) = self.udp.flows.get_mut(&token) {
                f.last = Instant::now();
                if f.socket.send(&payload).is_ok() {
                    NetMetrics::add(&self.metrics.bytes_out, payload.len() as u64);
                }
            }
            return;
        }
        let target = match self.destination(dst, dst_port) {
            Ok(t) => t,
            Err(why) => {
                self.refuse("udp", dst, dst_port, &why);
                self.send_unreachable(frame, Icmpv4DstUnreachable::HostProhibited);
                return;
            }
        };
        let Some(mut socket) = open_udp(SocketAddrV4::new(target.ip, target.port)) else {
            self.send_unreachable(frame, Icmpv4DstUnreachable::NetUnreachable);
            return;
        };
        if self.udp.flows.len() >= MAX_FLOWS {
            if let Some(oldest) = self
                .udp
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(t, _)| *t)
            {
                self.udp.close(&self.poll, oldest);
            }
        }
        let token = self.token();
        if !self.register(&mut socket, token, Interest::READABLE) {
            return;
        }
        if socket.send(&payload).is_ok() {
            NetMetrics::add(&self.metrics.bytes_out, payload.len() as u64);
        }
        NetMetrics::add(&self.metrics.udp_flows, 1);
        self.udp.by_key.insert(key, token);
        self.udp.flows.insert(
            token,
            UdpFlow {
                key,
                socket,
                last: Instant::now(),
                readable: true,
            },
        );
    }

    /// Datagrams from host sockets (flows and published ports) to the guest.
    pub(super) fn udp_relay(&mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = Vec::new();
        for f in self.udp.flows.values_mut() {
            while f.readable && self.link.has_room() {
                match f.socket.recv(&mut buf) {
                    Ok(n) => {
                        f.last = Instant::now();
                        NetMetrics::add(&self.metrics.bytes_in, n as u64);
                        out.push(udp_to_guest(
                            self.guest_mac,
                            (f.key.dst, f.key.dst_port),
                            (GUEST_IP, f.key.guest_port),
                            &buf[..n],
                        ));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => f.readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // ICMP errors from the host's network arrive as errors
                    // of the connected socket: the datagram is gone.
                    Err(_) => {}
                }
            }
        }
        let mut inbound = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Listener::Udp { socket, guest_port } = l {
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    inbound.push((i, *guest_port, from, buf[..n].to_vec()));
                }
            }
        }
        for (i, guest_port, from, data) in inbound {
            let port = self.udp.peer_port(i, from);
            NetMetrics::add(&self.metrics.bytes_in, data.len() as u64);
            out.push(udp_to_guest(
                self.guest_mac,
                (GATEWAY_IP, port),
                (GUEST_IP, guest_port),
                &data,
            ));
        }
        for frame in out {
            self.link.queue(&frame);
        }
    }
}

/// A host UDP socket connected to `to`.
fn open_udp(to: SocketAddrV4) -> Option<mio::net::UdpSocket> {
    let bind = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let socket = mio::net::UdpSocket::bind(bind).ok()?;
    socket.connect(SocketAddr::V4(to)).ok()?;
    Some(socket)
}
