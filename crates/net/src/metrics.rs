//! What a VM's network did: counters and the latest refused flows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How many refused flows are kept for inspection.
const RECENT_REFUSALS: usize = 32;
/// Refused flows logged per second at most (a guest can trigger them).
const LOG_PER_SECOND: u32 = 10;

/// A flow or a name nook refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedFlow {
    /// `tcp`, `udp`, `icmp` or `dns`.
    pub protocol: String,
    /// `IP:PORT` as the guest addressed it, or the name asked for.
    pub destination: String,
    /// The rule or reason that refused it.
    pub reason: String,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// TCP connections the guest opened that left the host.
    pub tcp_flows: u64,
    /// UDP flows the guest opened that left the host.
    pub udp_flows: u64,
    /// Connections to published ports.
    pub published_connections: u64,
    /// Flows and names refused by the egress policy.
    pub refused_flows: u64,
    pub dns_queries: u64,
    /// Payload bytes from the guest to the host's sockets.
    pub bytes_out: u64,
    /// Payload bytes from the host's sockets to the guest.
    pub bytes_in: u64,
    /// The most recent refusals, oldest first.
    pub recent_refusals: Vec<RefusedFlow>,
}

/// Live counters, shared between the back end thread and its owner.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub(crate) tcp_flows: AtomicU64,
    pub(crate) udp_flows: AtomicU64,
    pub(crate) published_connections: AtomicU64,
    pub(crate) refused_flows: AtomicU64,
    pub(crate) dns_queries: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    recent: Mutex<VecDeque<RefusedFlow>>,
    log_window: Mutex<(Option<Instant>, u32, u64)>,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts, keeps and logs (rate-limited) a refusal.
    pub(crate) fn refuse(&self, protocol: &str, destination: String, reason: String) {
        Self::add(&self.refused_flows, 1);
        let mut win = self.log_window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if win
            .0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            if win.2 > 0 {
                tracing::warn!("net: {} more refused flows not logged", win.2);
            }
            *win = (Some(now), 0, 0);
        }
        if win.1 < LOG_PER_SECOND {
            win.1 += 1;
            tracing::warn!("net: refused {protocol} to {destination}: {reason}");
        } else {
            win.2 += 1;
        }
        drop(win);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back(RefusedFlow {
            protocol: protocol.to_string(),
            destination,
            reason,
        });
    }

    /// The counters now.
    pub fn stats(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            tcp_flows: get(&self.tcp_flows),
            udp_flows: get(&self.udp_flows),
            published_connections: get(&self.published_connections),
            refused_flows: get(&self.refused_flows),
            dns_queries: get(&self.dns_queries),
            bytes_out: get(&self.bytes_out),
            bytes_in: get(&self.bytes_in),
            recent_refusals: self
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_the_latest_kept() {
        let m = NetMetrics::default();
        for i in 0..40 {
            m.refuse(
                "tcp",
                format!("1.2.3.4:{i}"),
                "no --allow rule covers it".into(),
            );
        }
        let s = m.stats();
        assert_eq!(s.refused_flows, 40);
        assert_eq!(s.recent_refusals.len(), RECENT_REFUSALS);
        assert_eq!(s.recent_refusals.last().unwrap().destination, "1.2.3.4:39");
    }
}
