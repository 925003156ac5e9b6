//! The NAT driven from the guest's side of the link with hand-made frames:
//! no VM, loopback only.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nook_net::link::{decode_frames, encode_frame};
use nook_net::{MacAddr, NetBackend, NetConfig, GATEWAY_IP, GUEST_IP};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
};

const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x15]);

struct Guest {
    link: UnixStream,
    buf: Vec<u8>,
    frames: VecDeque<Vec<u8>>,
}

impl Guest {
    fn send(&mut self, frame: &[u8]) {
        let mut out = Vec::new();
        encode_frame(frame, &mut out);
        self.link.write_all(&out).unwrap();
    }

    /// The next TCP frame the NAT sends, answering its ARP requests on
    /// the way.
    fn recv_tcp(&mut self) -> Vec<u8> {
        loop {
            let f = self.recv();
            if tcp_flags(&f).is_some() {
                return f;
            }
            if let Some(reply) = arp_reply(&f) {
                self.send(&reply);
            }
        }
    }

    /// The next frame the NAT sends, within 5 s.
    fn recv(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = self.frames.pop_front() {
                return f;
            }
            assert!(Instant::now() < deadline, "no frame from the NAT");
            let mut chunk = [0u8; 65536];
            self.link
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            if let Ok(n) = self.link.read(&mut chunk) {
                self.buf.extend_from_slice(&chunk[..n]);
                let used = decode_frames(&self.buf, &mut self.frames).unwrap();
                self.buf.drain(..used);
            }
        }
    }
}

/// A back end and a guest that has resolved the gateway's MAC (as a real
/// guest does before its first packet), so the NAT knows the guest's.
fn start(cfg: &NetConfig) -> (NetBackend, Guest) {
    let (backend, link) = NetBackend::start(cfg, MAC).unwrap();
    let mut guest = Guest {
        link,
        buf: Vec::new(),
        frames: VecDeque::new(),
    };
    let request = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(MAC.0),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY_IP,
    };
    guest.send(&arp_frame(&request, EthernetAddress::BROADCAST));
    let reply = guest.recv();
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    assert_eq!(eth.src_addr().0, nook_net::config::GATEWAY_MAC.0);
    (backend, guest)
}

fn arp_frame(repr: &ArpRepr, dst: EthernetAddress) -> Vec<u8> {
    let mut out = vec![0u8; 14 + repr.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(MAC.0),
        dst_addr: dst,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[14..]));
    out
}

fn tcp_frame(dst: Ipv4Addr, dst_port: u16, control: TcpControl) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port,
        control,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64000,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut out = vec![0u8; 14 + 20 + tcp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(MAC.0),
        dst_addr: EthernetAddress(nook_net::config::GATEWAY_MAC.0),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut out[14..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut out[34..]),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    out
}

/// The guest's answer to an ARP request for its address.
fn arp_reply(frame: &[u8]) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&arp).ok()?
    else {
        return None;
    };
    if target_protocol_addr != GUEST_IP {
        return None;
    }
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(MAC.0),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    Some(arp_frame(&repr, source_hardware_addr))
}

/// A UDP datagram from the guest's port 5353 to `dst`.
fn udp_frame(dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: 5353,
        dst_port,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut out = vec![0u8; 14 + 20 + 8 + payload.len()];
    EthernetRepr {
        src_addr: EthernetAddress(MAC.0),
        dst_addr: EthernetAddress(nook_net::config::GATEWAY_MAC.0),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut out[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut out[34..]),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    out
}

/// The UDP payload of `frame`, if it is a datagram to the guest's 5353.
fn udp_payload(frame: &[u8]) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    (udp.dst_port() == 5353).then(|| udp.payload().to_vec())
}

/// The TCP segment in `frame`, if it is one.
fn tcp_flags(frame: &[u8]) -> Option<(bool, bool, bool)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((tcp.syn(), tcp.ack(), tcp.rst()))
}

#[test]
fn a_refused_syn_gets_a_reset_and_is_counted() {
    let (backend, mut guest) = start(&NetConfig::default());
    guest.send(&tcp_frame(GATEWAY_IP, 9, TcpControl::Syn));
    let reply = guest.recv_tcp();
    assert_eq!(tcp_flags(&reply).map(|f| f.2), Some(true), "a reset");
    let stats = backend.stats();
    assert_eq!(stats.refused_flows, 1);
    assert_eq!(stats.recent_refusals[0].destination, "10.0.2.2:9");
}

#[test]
fn an_allowed_syn_is_answered_once_the_host_accepts() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let cfg = NetConfig {
        allow: vec![format!("host.nook.internal:{port}").parse().unwrap()],
        ..NetConfig::default()
    };
    let (backend, mut guest) = start(&cfg);
    guest.send(&tcp_frame(GATEWAY_IP, port, TcpControl::Syn));
    let reply = guest.recv_tcp();
    assert_eq!(tcp_flags(&reply), Some((true, true, false)), "a SYN-ACK");
    let (_conn, peer) = server.accept().unwrap();
    assert!(peer.ip().is_loopback());
    assert_eq!(backend.stats().tcp_flows, 1);
    assert_eq!(backend.stats().refused_flows, 0);
}

#[test]
fn nooks_dns_answers_allowed_names_only_and_maps_the_host_loopback() {
    use nook_net::dns::{build_query, parse_answer, Rcode, TYPE_A};
    let cfg = NetConfig {
        allow: vec!["allowed.test".parse().unwrap()],
        hosts: vec![
            "allowed.test:127.0.0.1".parse().unwrap(),
            "other.test:10.9.9.9".parse().unwrap(),
        ],
        ..NetConfig::default()
    };
    let (backend, mut guest) = start(&cfg);
    let mut ask = |id: u16, name: &str, server: Ipv4Addr| {
        guest.send(&udp_frame(server, 53, &build_query(id, name, TYPE_A)));
        loop {
            if let Some(p) = udp_payload(&guest.recv()) {
                return parse_answer(&p).unwrap();
            }
        }
    };
    let gw = GATEWAY_IP;
    assert_eq!(
        ask(1, "allowed.test", nook_net::DNS_IP),
        (1, Rcode::NoError, vec![gw]),
        "the host's loopback is reached through the gateway"
    );
    assert_eq!(
        ask(2, "other.test", nook_net::DNS_IP),
        (2, Rcode::NxDomain, vec![])
    );
    // Any resolver address the guest picks is nook's DNS.
    assert_eq!(
        ask(3, "allowed.test", Ipv4Addr::new(8, 8, 8, 8)),
        (3, Rcode::NoError, vec![gw])
    );
    let stats = backend.stats();
    assert_eq!(stats.dns_queries, 3);
    assert_eq!(stats.refused_flows, 1);
    assert_eq!(stats.recent_refusals[0].destination, "other.test");
}
