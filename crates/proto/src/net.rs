//! The value of the network boot word (`nook.net=`, a field of
//! [`crate::BootWords`]): `ADDR/PREFIX,GATEWAY,DNS,MTU,MAC`, how the host
//! tells the agent to configure the guest's NIC (the interface with MAC
//! `MAC`) without DHCP. Absent: the guest has only `lo`.

use std::fmt;
use std::net::Ipv4Addr;

/// The guest side of a VM's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetBoot {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The guest's only resolver.
    pub dns: Ipv4Addr,
    pub mtu: u16,
    /// The NIC's MAC address: how the agent finds the interface.
    pub mac: [u8; 6],
}

/// A `nook.net=` word that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad nook.net `{0}`: want ADDR/PREFIX,GATEWAY,DNS,MTU,MAC")]
pub struct NetBootError(pub String);

/// Formats a MAC address as `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `02:00:00:00:00:01`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl NetBoot {
    /// The value of a `nook.net=` word (without the key).
    pub fn parse_value(value: &str) -> Result<NetBoot, NetBootError> {
        let bad = || NetBootError(value.to_string());
        let mut it = value.split(',');
        let mut next = || it.next().ok_or_else(bad);
        let (addr, prefix) = next()?.split_once('/').ok_or_else(bad)?;
        let nb = NetBoot {
            address: addr.parse().map_err(|_| bad())?,
            prefix: prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?,
            gateway: next()?.parse().map_err(|_| bad())?,
            dns: next()?.parse().map_err(|_| bad())?,
            mtu: next()?.parse().ok().filter(|m| *m >= 68).ok_or_else(bad)?,
            mac: parse_mac(next()?).ok_or_else(bad)?,
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(nb)
    }
}

impl fmt::Display for NetBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{},{},{},{},{}",
            self.address,
            self.prefix,
            self.gateway,
            self.dns,
            self.mtu,
            format_mac(&self.mac)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootWords;

    #[test]
    fn the_word_is_found_on_a_command_line() {
        let nb = NetBoot {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            mtu: 65520,
            mac: [2, 0x4e, 0, 0, 0, 1],
        };
        let words = BootWords {
            net: Some(nb),
            ..BootWords::default()
        };
        assert_eq!(
            words.to_cmdline(),
            "nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,65520,02:4e:00:00:00:01"
        );
        let line = format!("console=ttyS0 {} quiet", words.to_cmdline());
        assert_eq!(BootWords::parse(&line).unwrap().net, Some(nb));
        assert_eq!(BootWords::parse("console=ttyS0").unwrap().net, None);
        for bad in [
            "nook.net=10.0.2.15,10.0.2.2,10.0.2.3,1500,02:00:00:00:00:01",
            "nook.net=10.0.2.15/33,10.0.2.2,10.0.2.3,1500,02:00:00:00:00:01",
            "nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,1500,02:00:00:00:00",
            "nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,10,02:00:00:00:00:01",
            "nook.net=10.0.2.15/24,10.0.2.2,10.0.2.3,1500,02:00:00:00:00:01,x",
        ] {
            assert!(BootWords::parse(bad).is_err(), "{bad}");
        }
        let twice = format!("{} {}", words.to_cmdline(), words.to_cmdline());
        assert!(BootWords::parse(&twice).is_err());
    }

    #[test]
    fn macs_round_trip() {
        let mac = [0x02, 0xab, 0, 1, 2, 0xff];
        assert_eq!(format_mac(&mac), "02:ab:00:01:02:ff");
        assert_eq!(parse_mac("02:ab:00:01:02:ff"), Some(mac));
        assert_eq!(parse_mac("02:ab:00:01:02"), None);
        assert_eq!(parse_mac("02:ab:00:01:02:ff:00"), None);
    }
}
