//! The NAT: one thread per VM (`nook-net`) that owns the link to the
//! guest's NIC, a smoltcp interface acting as the gateway, and every host
//! socket of the VM's flows.
//!
//! Each turn of the loop:
//!
//! 1. wait (mio) for the link, a host socket, a resolver answer or the
//!    next smoltcp timer;
//! 2. read frames from the link and classify them: ARP and TCP go to
//!    smoltcp (a SYN only once its host connection is up, see [`tcp`]);
//!    UDP is relayed or answered by nook's DNS ([`udp`], [`dns`]); pings to
//!    foreign addresses get an ICMP error;
//! 3. let smoltcp process its frames, move bytes between its sockets and
//!    the host sockets, let smoltcp send;
//! 4. write queued frames to the link.

mod dns;
mod tcp;
mod udp;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Icmpv4DstUnreachable, IpCidr};

use crate::config::{MacAddr, NetConfig, DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, PREFIX_LEN};
use crate::frames::{classify, unreachable_to_guest, GuestFrame};
use crate::link::{Link, Wire};
use crate::metrics::NetMetrics;
use crate::policy::{Destination, Policy, Refusal};

pub(crate) use tcp::TcpTable;
pub(crate) use udp::UdpTable;

pub(crate) const LINK: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
/// Published-port listeners take tokens from here on.
pub(crate) const FIRST_LISTENER: usize = 16;
/// Flows take tokens from here on.
const FIRST_FLOW: usize = 1 << 20;

/// A published port's host socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp {
        socket: mio::net::TcpListener,
        guest_port: u16,
    },
    Udp {
        socket: mio::net::UdpSocket,
        guest_port: u16,
    },
}

/// Everything the `nook-net` thread owns.
pub(crate) struct Nat {
    pub poll: Poll,
    pub link: Link,
    /// Frames for smoltcp, in arrival order.
    pub rx: VecDeque<Vec<u8>>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    /// Learnt from the guest's frames (a restored clone may change it).
    pub guest_mac: MacAddr,
    pub policy: Policy,
    pub metrics: Arc<NetMetrics>,
    pub listeners: Vec<Listener>,
    pub tcp: TcpTable,
    pub udp: UdpTable,
    pub dns: dns::Resolver,
    next_token: usize,
}

/// 64 random bits from the host (smoltcp's initial sequence numbers).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_le_bytes(b)
}

/// `Instant` for smoltcp.
pub(crate) fn smol_now() -> SmolInstant {
    SmolInstant::now()
}

impl Nat {
    pub fn new(
        poll: Poll,
        link: Link,
        cfg: &NetConfig,
        guest_mac: MacAddr,
        metrics: Arc<NetMetrics>,
        listeners: Vec<Listener>,
        waker: Arc<mio::Waker>,
    ) -> Nat {
        let mut link = link;
        let mut rx = VecDeque::new();
        let hw = HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC.0));
        let mut config = Config::new(hw);
        config.random_seed = random_u64();
        let mut iface = Interface::new(
            config,
            &mut Wire {
                rx: &mut rx,
                link: &mut link,
            },
            smol_now(),
        );
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(GATEWAY_IP.into(), PREFIX_LEN));
            let _ = addrs.push(IpCidr::new(DNS_IP.into(), PREFIX_LEN));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);
        iface.set_any_ip(true);
        Nat {
            poll,
            link,
            rx,
            iface,
            sockets: SocketSet::new(Vec::new()),
            guest_mac,
            policy: Policy::new(cfg, &crate::policy::host_addresses()),
            metrics,
            listeners,
            tcp: TcpTable::default(),
            udp: UdpTable::default(),
            dns: dns::Resolver::new(waker),
            next_token: FIRST_FLOW,
        }
    }

    pub fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    pub fn register(
        &self,
        source: &mut impl mio::event::Source,
        token: Token,
        interest: Interest,
    ) -> bool {
        match self.poll.registry().register(source, token, interest) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("net: cannot watch a host socket: {e}");
                false
            }
        }
    }

    /// Runs until `stop` is set or the link closes.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        let mut busy = false;
        loop {
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let smol = self
                    .iface
                    .poll_delay(smol_now(), &self.sockets)
                    .map(|d| Duration::from_micros(d.total_micros()));
                let mine = self.tcp.next_deadline().min(self.udp.next_deadline());
                Some(smol.map_or(mine, |s| s.min(mine)))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("net: the event loop failed: {e}");
                    return;
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            for ev in events.iter() {
                self.dispatch(ev);
            }
            busy = self.turn();
            if self.link.closed {
                tracing::debug!("net: the NIC's link closed");
                return;
            }
        }
    }

    fn dispatch(&mut self, ev: &mio::event::Event) {
        let token = ev.token();
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
        match token {
            LINK => {
                self.link.readable |= readable;
                self.link.writable |= writable;
            }
            WAKER => {}
            Token(t) if t >= FIRST_FLOW => {
                if !self.tcp.on_event(token, readable, writable) {
                    self.udp.on_event(token, readable);
                }
            }
            Token(_) => {}
        }
    }

    /// One turn of the loop after the wait; returns whether work is left
    /// that should not wait for an event.
    fn turn(&mut self) -> bool {
        let mut frames = VecDeque::new();
        let more = self.link.read_frames(&mut frames);
        for frame in frames {
            self.on_guest_frame(frame);
        }
        self.accept_published();
        self.dns_answers();
        self.udp_relay();
        self.poll_stack();
        self.tcp_connects();
        let pumped = self.tcp_pump();
        self.poll_stack();
        self.udp.expire(&self.poll);
        self.link.flush();
        more || pumped
    }

    /// Lets smoltcp take its frames and send what its sockets have.
    pub fn poll_stack(&mut self) {
        let mut wire = Wire {
            rx: &mut self.rx,
            link: &mut self.link,
        };
        self.iface.poll(smol_now(), &mut wire, &mut self.sockets);
    }

    fn on_guest_frame(&mut self, frame: Vec<u8>) {
        let (kind, mac) = classify(&frame, GUEST_IP, &[GATEWAY_IP, DNS_IP]);
        if let Some(mac) = mac {
            self.guest_mac = mac;
        }
        match kind {
            GuestFrame::Stack | GuestFrame::Tcp => self.rx.push_back(frame),
            GuestFrame::TcpSyn {
                src_port,
                dst,
                dst_port,
            } => self.tcp_syn(frame, src_port, dst, dst_port),
            GuestFrame::Udp {
                src_port,
                dst,
                dst_port,
                payload,
            } => self.udp_from_guest(&frame, src_port, dst, dst_port, payload),
            GuestFrame::ForeignPing => {
                // Ping is not relayed: it fails at once, cleanly.
                self.send_unreachable(&frame, Icmpv4DstUnreachable::HostProhibited);
            }
            GuestFrame::Drop => {}
        }
    }

    pub fn send_unreachable(&mut self, frame: &[u8], reason: Icmpv4DstUnreachable) {
        if let Some(reply) = unreachable_to_guest(self.guest_mac, frame, reason) {
            self.link.queue(&reply);
        }
    }

    /// Where a flow the guest addressed to `dst:port` goes on the host, if
    /// the policy lets it.
    pub fn destination(&self, dst: Ipv4Addr, port: u16) -> Result<Destination, Refusal> {
        let d = if dst == GATEWAY_IP {
            Destination {
                ip: Ipv4Addr::LOCALHOST,
                port,
                via_host_alias: true,
            }
        } else if crate::config::Ipv4Cidr::new(GUEST_IP, PREFIX_LEN).contains(dst) {
            return Err(Refusal::Unreachable);
        } else {
            Destination {
                ip: dst,
                port,
                via_host_alias: false,
            }
        };
        self.policy.check_flow(d)?;
        Ok(d)
    }

    pub fn refuse(&self, protocol: &str, dst: Ipv4Addr, port: u16, why: &Refusal) {
        self.metrics
            .refuse(protocol, format!("{dst}:{port}"), why.to_string());
    }
}
