//! nook's DNS: the guest's only resolver. A name resolves only when the
//! policy allows it; static entries and `host.nook.internal` are answered
//! at once, other names by the host's resolver on short-lived worker
//! threads (`nook-net-dns`, a bounded number at a time). Every answer is
//! recorded in the policy, so flows may go only where allowed names led.

use std::net::{Ipv4Addr, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use super::Nat;
use crate::config::{GATEWAY_IP, GUEST_IP, HOST_ALIAS};
use crate::dns::{self, DnsError, DnsQuery, Rcode, TYPE_A};
use crate::frames::udp_to_guest;
use crate::metrics::NetMetrics;
use crate::policy::NameVerdict;

/// Host lookups in flight at most; more queries get SERVFAIL.
const MAX_IN_FLIGHT: usize = 16;

/// Where an answer goes back to: the guest's port and the address it asked.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    guest_port: u16,
    server: Ipv4Addr,
}

#[derive(Debug)]
struct Lookup {
    query: DnsQuery,
    reply_to: ReplyTo,
    verdict: NameVerdict,
    result: Vec<Ipv4Addr>,
    failed: bool,
}

/// The host lookups in flight.
#[derive(Debug)]
pub(crate) struct Resolver {
    tx: Sender<Lookup>,
    rx: Receiver<Lookup>,
    waker: Arc<mio::Waker>,
    in_flight: usize,
}

impl Resolver {
    pub fn new(waker: Arc<mio::Waker>) -> Resolver {
        let (tx, rx) = channel();
        Resolver {
            tx,
            rx,
            waker,
            in_flight: 0,
        }
    }
}

/// The guest-visible form of a resolved address: the host's loopback is
/// reached through the gateway.
fn guest_visible(ip: Ipv4Addr) -> Ipv4Addr {
    if ip.is_loopback() {
        GATEWAY_IP
    } else {
        ip
    }
}

impl Nat {
    /// A datagram to port 53 (of nook's DNS address or any other).
    pub(super) fn dns_query(&mut self, guest_port: u16, server: Ipv4Addr, payload: &[u8]) {
        NetMetrics::add(&self.metrics.dns_queries, 1);
        let reply_to = ReplyTo { guest_port, server };
        let query = match dns::parse_query(payload) {
            Ok(q) => q,
            Err(DnsError::Malformed { id, rd, rcode }) => {
                self.dns_reply(reply_to, &dns::error_answer(id, rd, rcode));
                return;
            }
            Err(_) => return,
        };
        let verdict = self.policy.check_name(&query.name);
        if let NameVerdict::Refused(why) = &verdict {
            self.metrics
                .refuse("dns", query.name.clone(), why.to_string());
            self.dns_reply(reply_to, &dns::answer(&query, Rcode::NxDomain, &[]));
            return;
        }
        let fixed = if query.name == HOST_ALIAS {
            Some(Ipv4Addr::LOCALHOST)
        } else {
            self.policy.static_host(&query.name)
        };
        if let Some(ip) = fixed {
            self.finish_lookup(
                Lookup {
                    query,
                    reply_to,
                    verdict,
                    result: vec![ip],
                    failed: false,
                },
                true,
            );
            return;
        }
        if query.qtype != TYPE_A {
            // nook's network is IPv4 only: no records, but the name exists.
            self.dns_reply(reply_to, &dns::answer(&query, Rcode::NoError, &[]));
            return;
        }
        if self.dns.in_flight >= MAX_IN_FLIGHT {
            self.dns_reply(reply_to, &dns::answer(&query, Rcode::ServFail, &[]));
            return;
        }
        let tx = self.dns.tx.clone();
        let waker = self.dns.waker.clone();
        let name = query.name.clone();
        let mut lookup = Lookup {
            query,
            reply_to,
            verdict,
            result: Vec::new(),
            failed: false,
        };
        let spawned = std::thread::Builder::new()
            .name("nook-net-dns".into())
            .spawn(move || {
                match (name.as_str(), 0u16).to_socket_addrs() {
                    Ok(addrs) => {
                        for a in addrs {
                            if let std::net::SocketAddr::V4(v4) = a {
                                if !lookup.result.contains(v4.ip()) {
                                    lookup.result.push(*v4.ip());
                                }
                            }
                        }
                    }
                    Err(_) => lookup.failed = true,
                }
                let _ = tx.send(lookup);
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.dns.in_flight += 1,
            Err(e) => tracing::warn!("net: cannot start a dns lookup: {e}"),
        }
    }

    /// Answers the lookups the workers finished.
    pub(super) fn dns_answers(&mut self) {
        while let Ok(lookup) = self.dns.rx.try_recv() {
            self.dns.in_flight = self.dns.in_flight.saturating_sub(1);
            self.finish_lookup(lookup, false);
        }
    }

    fn finish_lookup(&mut self, l: Lookup, explicit: bool) {
        let answers = self.policy.record_answer(&l.verdict, &l.result, explicit);
        let (rcode, ips): (Rcode, Vec<Ipv4Addr>) = if l.failed || answers.is_empty() {
            if !l.failed && !l.result.is_empty() {
                // Resolved, but to nothing an allowed CIDR covers.
                self.metrics.refuse(
                    "dns",
                    l.query.name.clone(),
                    "no --allow rule covers its addresses".into(),
                );
            }
            (Rcode::NxDomain, Vec::new())
        } else {
            (
                Rcode::NoError,
                answers.into_iter().map(guest_visible).collect(),
            )
        };
        let msg = dns::answer(&l.query, rcode, &ips);
        self.dns_reply(l.reply_to, &msg);
    }

    fn dns_reply(&mut self, to: ReplyTo, msg: &[u8]) {
        let frame = udp_to_guest(
            self.guest_mac,
            (to.server, 53),
            (GUEST_IP, to.guest_port),
            msg,
        );
        self.link.queue(&frame);
    }
}
