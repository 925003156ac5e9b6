//! Frames nook writes itself (UDP datagrams and ICMP errors toward the
//! guest) and the parse of the guest's frames that decides where each
//! goes. TCP and ARP frames are smoltcp's.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
    UdpRepr,
};

use crate::config::{MacAddr, GATEWAY_MAC};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;

/// What a guest frame is, as far as the NAT cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestFrame {
    /// ARP, or IPv4 for smoltcp (TCP segments, pings to the gateway).
    Stack,
    /// A TCP segment opening a connection (SYN without ACK).
    TcpSyn {
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
    },
    /// Other TCP segments.
    Tcp,
    /// A UDP datagram (checksum verified).
    Udp {
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
        payload: Vec<u8>,
    },
    /// An ICMP echo request to an address other than nook's own.
    ForeignPing,
    /// Anything else: dropped.
    Drop,
}

/// Classifies a frame from the guest; `gateway_addrs` are nook's own
/// addresses (pings to them are smoltcp's). Frames whose IPv4 source is not
/// `guest_ip` are dropped.
pub(crate) fn classify(
    frame: &[u8],
    guest_ip: Ipv4Addr,
    gateway_addrs: &[Ipv4Addr],
) -> (GuestFrame, Option<MacAddr>) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return (GuestFrame::Drop, None);
    };
    let src_mac = MacAddr(eth.src_addr().0);
    match eth.ethertype() {
        EthernetProtocol::Arp => return (GuestFrame::Stack, None),
        EthernetProtocol::Ipv4 => {}
        _ => return (GuestFrame::Drop, None),
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return (GuestFrame::Drop, None);
    };
    if ip.src_addr() != guest_ip
        || !ip.verify_checksum()
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return (GuestFrame::Drop, None);
    }
    let dst = ip.dst_addr();
    let kind = match ip.next_header() {
        IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()) {
            Ok(tcp) if tcp.syn() && !tcp.ack() => GuestFrame::TcpSyn {
                src_port: tcp.src_port(),
                dst,
                dst_port: tcp.dst_port(),
            },
            Ok(_) => GuestFrame::Tcp,
            Err(_) => GuestFrame::Drop,
        },
        IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
            Ok(udp)
                if udp.checksum() == 0
                    || udp.verify_checksum(
                        &IpAddress::Ipv4(ip.src_addr()),
                        &IpAddress::Ipv4(dst),
                    ) =>
            {
                GuestFrame::Udp {
                    src_port: udp.src_port(),
                    dst,
                    dst_port: udp.dst_port(),
                    payload: udp.payload().to_vec(),
                }
            }
            _ => GuestFrame::Drop,
        },
        IpProtocol::Icmp if gateway_addrs.contains(&dst) => GuestFrame::Stack,
        IpProtocol::Icmp => match Icmpv4Packet::new_checked(ip.payload()) {
            Ok(icmp) if icmp.msg_type() == smoltcp::wire::Icmpv4Message::EchoRequest => {
                GuestFrame::ForeignPing
            }
            _ => GuestFrame::Drop,
        },
        _ => GuestFrame::Drop,
    };
    (kind, Some(src_mac))
}

fn ethernet(out: &mut [u8], dst_mac: MacAddr) {
    let mut eth = EthernetFrame::new_unchecked(out);
    EthernetRepr {
        src_addr: EthernetAddress(GATEWAY_MAC.0),
        dst_addr: EthernetAddress(dst_mac.0),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
}

/// A UDP datagram from `src` to the guest.
pub(crate) fn udp_to_guest(
    guest_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp_len = UDP_LEN + payload.len();
    let mut out = vec![0u8; ETH_LEN + IPV4_LEN + udp_len];
    ethernet(&mut out, guest_mac);
    let ip_repr = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let mut ip = Ipv4Packet::new_unchecked(&mut out[ETH_LEN..]);
    ip_repr.emit(&mut ip, &caps);
    let mut udp = UdpPacket::new_unchecked(&mut out[ETH_LEN + IPV4_LEN..]);
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut udp,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &caps,
    );
    out
}

/// An ICMP "destination unreachable" from `from` about the guest's IPv4
/// packet inside `frame`: how a refused ping or UDP flow fails cleanly.
pub(crate) fn unreachable_to_guest(
    guest_mac: MacAddr,
    frame: &[u8],
    reason: Icmpv4DstUnreachable,
) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let header = Ipv4Repr::parse(&ip, &caps).ok()?;
    let data_len = ip.payload().len().min(8);
    let icmp = Icmpv4Repr::DstUnreachable {
        reason,
        header,
        data: &ip.payload()[..data_len],
    };
    let reply = Ipv4Repr {
        src_addr: header.dst_addr,
        dst_addr: header.src_addr,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut out = vec![0u8; ETH_LEN + IPV4_LEN + icmp.buffer_len()];
    ethernet(&mut out, guest_mac);
    reply.emit(&mut Ipv4Packet::new_unchecked(&mut out[ETH_LEN..]), &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut out[ETH_LEN + IPV4_LEN..]),
        &caps,
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DNS_IP, GATEWAY_IP, GUEST_IP};

    const GUEST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    /// A UDP frame from the guest: the reverse of `udp_to_guest`.
    fn from_guest(dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let mut f = udp_to_guest(GUEST_MAC, dst, (GUEST_IP, 5000), payload);
        // Swap to come from the guest: rebuild with the roles exchanged.
        let caps = ChecksumCapabilities::default();
        let udp_len = UDP_LEN + payload.len();
        let repr = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: dst.0,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        };
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]), &caps);
        UdpRepr {
            src_port: 5000,
            dst_port: dst.1,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut f[ETH_LEN + IPV4_LEN..]),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(dst.0),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        f
    }

    #[test]
    fn udp_from_the_guest_is_classified_with_its_payload() {
        let f = from_guest((DNS_IP, 53), b"query");
        let (kind, mac) = classify(&f, GUEST_IP, &[GATEWAY_IP, DNS_IP]);
        assert_eq!(
            kind,
            GuestFrame::Udp {
                src_port: 5000,
                dst: DNS_IP,
                dst_port: 53,
                payload: b"query".to_vec()
            }
        );
        assert_eq!(mac, Some(GATEWAY_MAC));
        // A corrupted checksum is dropped; so is a spoofed source.
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(classify(&bad, GUEST_IP, &[]).0, GuestFrame::Drop);
        assert_eq!(
            classify(&f, Ipv4Addr::new(10, 0, 2, 16), &[]).0,
            GuestFrame::Drop
        );
        assert_eq!(classify(&f[..20], GUEST_IP, &[]).0, GuestFrame::Drop);
    }

    #[test]
    fn unreachable_quotes_the_offending_header() {
        let f = from_guest((Ipv4Addr::new(1, 2, 3, 4), 9), b"x");
        let reply =
            unreachable_to_guest(GUEST_MAC, &f, Icmpv4DstUnreachable::HostProhibited).unwrap();
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr().0, GUEST_MAC.0);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.src_addr(), Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(ip.dst_addr(), GUEST_IP);
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_code(), 10);
    }
}
