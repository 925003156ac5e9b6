//! The egress policy: which names resolve and which flows may leave.
//!
//! A flow's destination is judged on the host's side of the NAT (the
//! address nook will connect to, after `host.nook.internal` became the
//! host's 127.0.0.1), in this order:
//!
//! 1. a `--deny` rule that covers it refuses it;
//! 2. an `--allow` rule covers it when its CIDR holds the address, when an
//!    allowed name resolved to the address *for this VM* (a grant, recorded
//!    by nook's DNS), or, for `host.nook.internal`, when the guest used the
//!    gateway address; the rule's port must match;
//! 3. the host's loopback, link-local (169.254.169.254 included), own
//!    addresses and other non-unicast ranges are refused unless an allow
//!    rule names them explicitly: a CIDR inside the blocked range, a
//!    `--add-host` entry, or `host.nook.internal`. A public name that
//!    resolves to 127.0.0.1 does not open the host;
//! 4. with any `--allow` rule, whatever no rule covers is refused.
//!
//! So a guest cannot get round a domain rule by connecting to a raw
//! address or by asking another resolver: only addresses an allowed name
//! resolved to through nook's DNS, or an allowed CIDR covers, are reached.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::config::{EgressRule, Ipv4Cidr, NetConfig, RuleTarget, HOST_ALIAS};

/// At most this many addresses carry grants; further answers still resolve
/// but open nothing new (a guest resolving names forever cannot grow it).
const MAX_GRANTED_ADDRS: usize = 4096;

/// Why a flow or a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `--deny` rule matched.
    Denied(EgressRule),
    /// Allow rules exist and none covers the destination.
    NotAllowed,
    /// A host-local or non-unicast address no allow rule names explicitly.
    Blocked(Ipv4Cidr),
    /// Not a destination at all (the private network, nook's DNS over TCP).
    Unreachable,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied(r) => write!(f, "--deny {r}"),
            Refusal::NotAllowed => f.write_str("no --allow rule covers it"),
            Refusal::Blocked(range) => write!(
                f,
                "host range {range} is blocked unless an --allow rule names it"
            ),
            Refusal::Unreachable => f.write_str("no such destination on the VM network"),
        }
    }
}

/// How a name may resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameVerdict {
    /// Resolve it; `rule` is the allow rule that admitted it (its answers
    /// become grants), `None` when there are no allow rules.
    Allowed {
        rule: Option<usize>,
    },
    /// Resolve it, but answer only with addresses an allowed CIDR covers.
    IfCovered,
    Refused(Refusal),
}

/// A flow's destination, on the host side of the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The guest addressed the gateway (`host.nook.internal`).
    pub via_host_alias: bool,
}

#[derive(Debug, Clone)]
struct Grant {
    /// Index into the allow rules.
    rule: usize,
    /// From `--add-host`: the user named this address explicitly.
    explicit: bool,
}

/// The policy of one VM, with the grants its DNS answers made.
#[derive(Debug)]
pub struct Policy {
    allow: Vec<EgressRule>,
    deny: Vec<EgressRule>,
    hosts: HashMap<String, Ipv4Addr>,
    blocked: Vec<Ipv4Cidr>,
    grants: HashMap<Ipv4Addr, Vec<Grant>>,
}

/// Ranges no flow reaches unless explicitly allowed: "this network",
/// loopback, link-local, multicast and broadcast.
pub fn default_blocked() -> Vec<Ipv4Cidr> {
    [
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::new(255, 255, 255, 255), 32),
    ]
    .into_iter()
    .map(|(a, p)| Ipv4Cidr::new(a, p))
    .collect()
}

/// The host's own IPv4 addresses (each blocked like loopback).
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Policy {
    /// The policy of `cfg`; `host_addrs` are blocked as host addresses.
    pub fn new(cfg: &NetConfig, host_addrs: &[Ipv4Addr]) -> Policy {
        let mut blocked = default_blocked();
        blocked.extend(host_addrs.iter().map(|ip| Ipv4Cidr::new(*ip, 32)));
        Policy {
            allow: cfg.allow.clone(),
            deny: cfg.deny.clone(),
            hosts: cfg.hosts.iter().map(|h| (h.name.clone(), h.ip)).collect(),
            blocked,
            grants: HashMap::new(),
        }
    }

    /// The static (`--add-host`) address of `name`.
    pub fn static_host(&self, name: &str) -> Option<Ipv4Addr> {
        self.hosts.get(name).copied()
    }

    /// Whether `name` (normalized) may resolve.
    pub fn check_name(&self, name: &str) -> NameVerdict {
        let is_alias = name == HOST_ALIAS;
        let matches = |r: &EgressRule| match &r.target {
            RuleTarget::Domain(d) => d.matches(name),
            RuleTarget::Host => is_alias,
            RuleTarget::Cidr(_) => false,
        };
        if let Some(r) = self.deny.iter().find(|r| r.port.is_none() && matches(r)) {
            return NameVerdict::Refused(Refusal::Denied(r.clone()));
        }
        if self.allow.is_empty() {
            return NameVerdict::Allowed { rule: None };
        }
        if let Some(i) = self.allow.iter().position(matches) {
            return NameVerdict::Allowed { rule: Some(i) };
        }
        if self
            .allow
            .iter()
            .any(|r| matches!(r.target, RuleTarget::Cidr(_)))
        {
            return NameVerdict::IfCovered;
        }
        NameVerdict::Refused(Refusal::NotAllowed)
    }

    /// Records what `name` resolved to under `verdict` and returns the
    /// addresses to answer with (filtered for [`NameVerdict::IfCovered`]).
    pub fn record_answer(
        &mut self,
        verdict: &NameVerdict,
        ips: &[Ipv4Addr],
        explicit: bool,
    ) -> Vec<Ipv4Addr> {
        match verdict {
            NameVerdict::Allowed { rule: Some(rule) } => {
                for ip in ips {
                    if self.grants.len() >= MAX_GRANTED_ADDRS && !self.grants.contains_key(ip) {
                        tracing::warn!("net: too many resolved addresses; {ip} opens nothing");
                        continue;
                    }
                    let grants = self.grants.entry(*ip).or_default();
                    if !grants
                        .iter()
                        .any(|g| g.rule == *rule && g.explicit == explicit)
                    {
                        grants.push(Grant {
                            rule: *rule,
                            explicit,
                        });
                    }
                }
                ips.to_vec()
            }
            NameVerdict::Allowed { rule: None } => ips.to_vec(),
            NameVerdict::IfCovered => ips
                .iter()
                .copied()
                .filter(|ip| self.allow.iter().any(|r| cidr_covers(r, *ip)))
                .collect(),
            NameVerdict::Refused(_) => Vec::new(),
        }
    }

    /// The blocked range `ip` is in, if any.
    fn blocked_range(&self, ip: Ipv4Addr) -> Option<Ipv4Cidr> {
        self.blocked.iter().copied().find(|b| b.contains(ip))
    }

    /// Judges a flow to `dst` (see the module docs for the order).
    pub fn check_flow(&self, dst: Destination) -> Result<(), Refusal> {
        let granted = |rule: &EgressRule, idx: Option<usize>| -> Option<bool> {
            if !rule.admits_port(dst.port) {
                return None;
            }
            match &rule.target {
                RuleTarget::Cidr(c) if c.contains(dst.ip) => {
                    Some(self.blocked_range(dst.ip).is_some_and(|b| c.within(&b)))
                }
                RuleTarget::Cidr(_) => None,
                RuleTarget::Host => dst.via_host_alias.then_some(true),
                RuleTarget::Domain(_) => {
                    let grants = self.grants.get(&dst.ip)?;
                    let mine: Vec<&Grant> = grants
                        .iter()
                        .filter(|g| idx.is_none_or(|i| g.rule == i))
                        .collect();
                    if mine.is_empty() {
                        None
                    } else {
                        Some(mine.iter().any(|g| g.explicit))
                    }
                }
            }
        };
        // Denied names never resolve, so a domain deny has nothing to add
        // at the flow level.
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| !matches!(r.target, RuleTarget::Domain(_)) && granted(r, None).is_some())
        {
            return Err(Refusal::Denied(rule.clone()));
        }
        let mut allowed = false;
        let mut explicit = false;
        for (i, rule) in self.allow.iter().enumerate() {
            if let Some(e) = granted(rule, Some(i)) {
                allowed = true;
                explicit |= e;
            }
        }
        if let Some(range) = self.blocked_range(dst.ip) {
            return if explicit {
                Ok(())
            } else {
                Err(Refusal::Blocked(range))
            };
        }
        if self.allow.is_empty() || allowed {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

fn cidr_covers(rule: &EgressRule, ip: Ipv4Addr) -> bool {
    matches!(&rule.target, RuleTarget::Cidr(c) if c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allow: &[&str], deny: &[&str], hosts: &[&str]) -> NetConfig {
        NetConfig {
            publish: Vec::new(),
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
            hosts: hosts.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn dst(ip: [u8; 4], port: u16) -> Destination {
        Destination {
            ip: Ipv4Addr::from(ip),
            port,
            via_host_alias: false,
        }
    }

    fn alias(port: u16) -> Destination {
        Destination {
            ip: Ipv4Addr::LOCALHOST,
            port,
            via_host_alias: true,
        }
    }

    #[test]
    fn no_rules_allow_the_world_but_not_the_host() {
        let p = Policy::new(&cfg(&[], &[], &[]), &[Ipv4Addr::new(192, 168, 1, 5)]);
        assert_eq!(p.check_flow(dst([93, 184, 216, 34], 443)), Ok(()));
        assert!(matches!(
            p.check_flow(alias(8000)),
            Err(Refusal::Blocked(_))
        ));
        assert!(matches!(
            p.check_flow(dst([169, 254, 169, 254], 80)),
            Err(Refusal::Blocked(_))
        ));
        assert!(matches!(
            p.check_flow(dst([192, 168, 1, 5], 22)),
            Err(Refusal::Blocked(_))
        ));
        assert_eq!(p.check_flow(dst([192, 168, 1, 6], 22)), Ok(()));
        assert_eq!(
            p.check_name("example.com"),
            NameVerdict::Allowed { rule: None }
        );
    }

    #[test]
    fn host_alias_rule_opens_only_its_port() {
        let p = Policy::new(&cfg(&["host.nook.internal:8000"], &[], &[]), &[]);
        assert_eq!(p.check_flow(alias(8000)), Ok(()));
        assert!(p.check_flow(alias(8001)).is_err());
        // The same loopback address, not through the alias: refused.
        assert!(p.check_flow(dst([127, 0, 0, 1], 8000)).is_err());
        assert_eq!(
            p.check_name(HOST_ALIAS),
            NameVerdict::Allowed { rule: Some(0) }
        );
        assert_eq!(
            p.check_name("example.com"),
            NameVerdict::Refused(Refusal::NotAllowed)
        );
    }

    #[test]
    fn domain_rules_open_only_what_the_name_resolved_to() {
        let mut p = Policy::new(
            &cfg(
                &["allowed.test:9000", "*.pkg.test"],
                &[],
                &["allowed.test:127.0.0.1", "other.test:127.0.0.1"],
            ),
            &[],
        );
        assert_eq!(
            p.check_name("other.test"),
            NameVerdict::Refused(Refusal::NotAllowed)
        );
        // Before resolution, nothing is open.
        assert!(p.check_flow(alias(9000)).is_err());
        let v = p.check_name("allowed.test");
        assert_eq!(v, NameVerdict::Allowed { rule: Some(0) });
        let ip = p.static_host("allowed.test").unwrap();
        assert_eq!(p.record_answer(&v, &[ip], true), vec![ip]);
        assert_eq!(p.check_flow(alias(9000)), Ok(()));
        assert_eq!(p.check_flow(dst([127, 0, 0, 1], 9000)), Ok(()));
        assert!(p.check_flow(alias(9001)).is_err(), "port-restricted rule");
        // A wildcard name resolving to loopback through the host resolver
        // does not open the host (DNS rebinding).
        let v = p.check_name("evil.pkg.test");
        assert_eq!(v, NameVerdict::Allowed { rule: Some(1) });
        p.record_answer(
            &v,
            &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(1, 2, 3, 4)],
            false,
        );
        assert!(matches!(
            p.check_flow(dst([127, 0, 0, 2], 80)),
            Err(Refusal::Blocked(_))
        ));
        assert_eq!(p.check_flow(dst([1, 2, 3, 4], 80)), Ok(()));
        // A raw address no name resolved to stays closed.
        assert_eq!(
            p.check_flow(dst([1, 2, 3, 5], 80)),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn cidr_rules_deny_wins_and_explicit_link_local() {
        let p = Policy::new(
            &cfg(
                &["10.0.0.0/8", "169.254.169.254:80", "0.0.0.0/0:53"],
                &["10.1.0.0/16"],
                &[],
            ),
            &[],
        );
        assert_eq!(p.check_flow(dst([10, 2, 3, 4], 1)), Ok(()));
        assert!(matches!(
            p.check_flow(dst([10, 1, 3, 4], 1)),
            Err(Refusal::Denied(_))
        ));
        assert_eq!(p.check_flow(dst([169, 254, 169, 254], 80)), Ok(()));
        assert!(p.check_flow(dst([169, 254, 169, 254], 81)).is_err());
        // 0.0.0.0/0 is not an explicit allow of loopback.
        assert!(matches!(
            p.check_flow(dst([127, 0, 0, 1], 53)),
            Err(Refusal::Blocked(_))
        ));
        let mut p = Policy::new(&cfg(&["10.0.0.0/8"], &[], &[]), &[]);
        assert_eq!(p.check_name("x.test"), NameVerdict::IfCovered);
        let answers = p.record_answer(
            &NameVerdict::IfCovered,
            &[Ipv4Addr::new(10, 9, 9, 9), Ipv4Addr::new(8, 8, 8, 8)],
            false,
        );
        assert_eq!(answers, vec![Ipv4Addr::new(10, 9, 9, 9)]);
    }

    #[test]
    fn deny_by_domain_refuses_the_name() {
        let p = Policy::new(&cfg(&[], &["*.ads.test"], &[]), &[]);
        assert!(matches!(
            p.check_name("x.ads.test"),
            NameVerdict::Refused(Refusal::Denied(_))
        ));
        assert_eq!(
            p.check_name("ads.test"),
            NameVerdict::Allowed { rule: None }
        );
    }

    #[test]
    fn host_addresses_are_listed() {
        let addrs = host_addresses();
        assert!(addrs.contains(&Ipv4Addr::LOCALHOST), "{addrs:?}");
    }
}
