//! What a VM's network is: [`NetConfig`] (published ports, egress rules,
//! static host entries), parsed from the CLI's spellings, plus the fixed
//! addresses of the private network every VM gets ([`GUEST_IP`] & co).
//!
//! Every type here is plain data: `Eq + Hash + Serialize`, so a snapshot
//! template key can include the network configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The guest's address on its private network.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Prefix length of the private network (10.0.2.0/24).
pub const PREFIX_LEN: u8 = 24;
/// The gateway: nook's side of the link, and the address under which the
/// host is reachable (`host.nook.internal`).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// nook's DNS server, the guest's only resolver.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The gateway's MAC address (locally administered).
pub const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0x4e, 0x4f, 0x4f, 0x4b, 0x02]);
/// The name under which the guest reaches the host, when a rule allows it.
pub const HOST_ALIAS: &str = "host.nook.internal";
/// Largest link MTU nook's back end handles (the guest's MTU is chosen by
/// the engine: large frames on QEMU, 1500 on the kvm engine's virtio-net).
pub const MAX_MTU: u16 = 65520;

/// A configuration value that does not parse; the message says what is
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn parse_err(what: &'static str, value: &str, expected: &'static str) -> ParseError {
    ParseError {
        what,
        value: value.to_string(),
        expected,
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (`02:..`), from the
    /// host's entropy: each VM and each restored clone gets its own.
    pub fn random() -> MacAddr {
        let mut b = [0u8; 6];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            parse_err(
                "MAC address",
                s,
                "want six hex bytes like 02:00:00:00:00:01",
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A published port: `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]`. Connections
/// to `host_ip:host_port` on the host reach `guest_port` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on: 127.0.0.1 unless given.
    pub host_ip: IpAddr,
    /// The host port; 0 lets the kernel choose one.
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WANT: &str = "want [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]";
        let bad = || parse_err("published port", s, WANT);
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Protocol::Tcp),
            Some((spec, "udp")) => (spec, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let (rest, guest) = spec.rsplit_once(':').ok_or_else(bad)?;
        let (host_ip, host_port) = match rest.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                (ip.parse::<IpAddr>().map_err(|_| bad())?, port)
            }
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
        };
        let host_port: u16 = host_port.parse().map_err(|_| bad())?;
        let guest_port: u16 = guest.parse().map_err(|_| bad())?;
        if guest_port == 0 {
            return Err(parse_err(
                "published port",
                s,
                "the guest port must be 1 to 65535",
            ));
        }
        Ok(PortMapping {
            host_ip,
            host_port,
            guest_port,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V4(ip) => write!(f, "{ip}")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
        }
        write!(
            f,
            ":{}:{}/{}",
            self.host_port, self.guest_port, self.protocol
        )
    }
}

/// An IPv4 network: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `addr/prefix` (`prefix` at most 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    /// Whether all of this network lies inside `outer`.
    pub fn within(&self, outer: &Ipv4Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.network)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || parse_err("network", s, "want an IPv4 address or CIDR like 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Cidr::new(addr.parse().map_err(|_| bad())?, prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A domain name or a wildcard `*.example.com` (which matches names below
/// `example.com`, not `example.com` itself). Stored lower-case, without a
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainPattern(String);

impl DomainPattern {
    /// Whether `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize_name(name);
        match self.0.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => name == self.0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lower-cases a DNS name and drops its trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is a syntactically valid host name (letters, digits,
/// `-`, `_`, labels of 1 to 63 bytes, at most 253 bytes in all).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for DomainPattern {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = normalize_name(s);
        let plain = name.strip_prefix("*.").unwrap_or(&name);
        if !valid_hostname(plain) || plain.parse::<Ipv4Addr>().is_ok() {
            return Err(parse_err(
                "domain",
                s,
                "want a host name like example.com or a wildcard like *.example.com",
            ));
        }
        Ok(DomainPattern(name))
    }
}

/// What an egress rule names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    /// Addresses in a network.
    Cidr(Ipv4Cidr),
    /// Names (resolved by nook's DNS) and the addresses they resolved to.
    Domain(DomainPattern),
    /// `host.nook.internal`: the host's own loopback, through the gateway.
    Host,
}

/// `--allow`/`--deny` `HOST|CIDR[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EgressRule {
    pub target: RuleTarget,
    /// Only this destination port (TCP and UDP); every port when `None`.
    pub port: Option<u16>,
}

impl EgressRule {
    /// Whether the rule's port restriction admits `port`.
    pub fn admits_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

impl FromStr for EgressRule {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    parse_err("rule", s, "want HOST|CIDR[:PORT] with a port of 1 to 65535")
                })?;
                (h, Some(port))
            }
            None => (s, None),
        };
        let starts_numeric = host.bytes().next().is_some_and(|b| b.is_ascii_digit());
        let target = if normalize_name(host) == HOST_ALIAS {
            RuleTarget::Host
        } else if host.contains('/') || (starts_numeric && host.parse::<Ipv4Addr>().is_ok()) {
            RuleTarget::Cidr(host.parse()?)
        } else {
            RuleTarget::Domain(host.parse()?)
        };
        Ok(EgressRule { target, port })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            RuleTarget::Cidr(c) if c.prefix == 32 => write!(f, "{}", c.network)?,
            RuleTarget::Cidr(c) => write!(f, "{c}")?,
            RuleTarget::Domain(d) => f.write_str(d.as_str())?,
            RuleTarget::Host => f.write_str(HOST_ALIAS)?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// `--add-host NAME:IP`: a static answer of nook's DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostEntry {
    /// Lower-case, no trailing dot.
    pub name: String,
    pub ip: Ipv4Addr,
}

impl FromStr for HostEntry {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || parse_err("host entry", s, "want NAME:IPV4 like db.test:10.1.2.3");
        let (name, ip) = s.split_once(':').ok_or_else(bad)?;
        let name = normalize_name(name);
        if !valid_hostname(&name) || name == HOST_ALIAS {
            return Err(bad());
        }
        Ok(HostEntry {
            name,
            ip: ip.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.ip)
    }
}

/// A VM's network. A VM without one has no network device at all.
///
/// With no `allow` rule every destination is allowed except the host's
/// loopback, link-local and own addresses and what `deny` names; with any
/// `allow` rule only what the rules allow is. A `deny` rule wins over an
/// `allow` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetConfig {
    /// Host ports forwarded into the guest.
    pub publish: Vec<PortMapping>,
    pub allow: Vec<EgressRule>,
    pub deny: Vec<EgressRule>,
    /// Static names nook's DNS answers.
    pub hosts: Vec<HostEntry>,
}

impl NetConfig {
    /// Checks what parsing alone cannot: no host port published twice.
    pub fn validate(&self) -> Result<(), ParseError> {
        for (i, a) in self.publish.iter().enumerate() {
            let dup = self.publish[..i].iter().any(|b| {
                a.host_port != 0
                    && a.host_port == b.host_port
                    && a.host_ip == b.host_ip
                    && a.protocol == b.protocol
            });
            if dup {
                return Err(parse_err(
                    "published port",
                    &a.to_string(),
                    "that host port is published twice",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_with_defaults() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (p.host_port, p.guest_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p: PortMapping = "0.0.0.0:53:5353/udp".parse().unwrap();
        assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "0.0.0.0:53:5353/udp");
        let p: PortMapping = "[::1]:8000:8000".parse().unwrap();
        assert_eq!(p.to_string(), "[::1]:8000:8000/tcp");
        for bad in ["80", "a:80", "80:0", "1:2/sctp", "x:1:2", "70000:1"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_parse_cidrs_domains_and_the_host_alias() {
        let r: EgressRule = "10.1.2.3/8:443".parse().unwrap();
        assert_eq!(
            r.target,
            RuleTarget::Cidr(Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(r.port, Some(443));
        assert_eq!(r.to_string(), "10.0.0.0/8:443");
        let r: EgressRule = "169.254.169.254".parse().unwrap();
        assert_eq!(r.to_string(), "169.254.169.254");
        let r: EgressRule = "*.Example.COM.".parse().unwrap();
        assert_eq!(r.to_string(), "*.example.com");
        let r: EgressRule = "host.nook.internal:8000".parse().unwrap();
        assert_eq!((r.target, r.port), (RuleTarget::Host, Some(8000)));
        for bad in [
            "",
            "a..b",
            "10.0.0.0/33",
            "x.com:0",
            "x.com:http",
            "*.*.x",
            "-:1",
        ] {
            assert!(bad.parse::<EgressRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let d: DomainPattern = "*.example.com".parse().unwrap();
        assert!(d.matches("a.example.com"));
        assert!(d.matches("A.B.example.com."));
        assert!(!d.matches("example.com"));
        assert!(!d.matches("badexample.com"));
        let d: DomainPattern = "example.com".parse().unwrap();
        assert!(d.matches("EXAMPLE.com."));
        assert!(!d.matches("a.example.com"));
    }

    #[test]
    fn cidrs_contain_and_nest() {
        let c: Ipv4Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(127, 1, 2, 3)));
        assert!(!c.contains(Ipv4Addr::new(128, 0, 0, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(!all.within(&c));
        assert!("127.0.0.1".parse::<Ipv4Cidr>().unwrap().within(&c));
    }

    #[test]
    fn host_entries_and_macs_parse() {
        let h: HostEntry = "Allowed.Test:127.0.0.1".parse().unwrap();
        assert_eq!(h.to_string(), "allowed.test:127.0.0.1");
        assert!("x".parse::<HostEntry>().is_err());
        assert!("host.nook.internal:1.2.3.4".parse::<HostEntry>().is_err());
        let m: MacAddr = "02:4e:4f:4f:4b:02".parse().unwrap();
        assert_eq!(m, GATEWAY_MAC);
        assert_eq!(m.to_string(), "02:4e:4f:4f:4b:02");
        assert!("02:4e:4f:4f:4b".parse::<MacAddr>().is_err());
        let r = MacAddr::random();
        assert_eq!(r.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn duplicate_published_ports_are_refused() {
        let mut c = NetConfig::default();
        c.publish.push("8000:80".parse().unwrap());
        c.publish.push("8000:81".parse().unwrap());
        assert!(c.validate().is_err());
        c.publish[1] = "8000:81/udp".parse().unwrap();
        c.validate().unwrap();
    }
}
