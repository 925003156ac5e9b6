//! The memory balloon over QMP: `balloon` sets its target, `query-balloon`
//! reads what the guest has given, and the device's `guest-stats` property
//! (`qom-get`) carries the guest's own memory statistics.

use serde_json::{json, Value};

use crate::config::BALLOON_ID;
use crate::error::QemuError;
use crate::vm::QemuVm;

/// The balloon and the guest's memory, as QEMU reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QemuBalloonStats {
    /// Memory the guest has handed to the balloon (its RAM minus QEMU's
    /// `actual`).
    pub balloon_bytes: u64,
    /// The guest's total memory (`stat-total-memory`), once it reported it.
    pub total_bytes: Option<u64>,
    /// The guest's free memory (`stat-free-memory`).
    pub free_bytes: Option<u64>,
    /// Memory the guest could use without swapping
    /// (`stat-available-memory`).
    pub available_bytes: Option<u64>,
    /// When the guest last reported statistics (seconds since the epoch);
    /// `None` before its first report or without a stats interval.
    pub stats_updated_unix: Option<u64>,
}

impl QemuVm {
    /// Asks the guest to put `balloon_mib` MiB of its memory into the
    /// balloon (0 empties it). Returns at once: the guest inflates or
    /// deflates at its own pace; [`QemuVm::balloon_stats`] shows progress.
    pub fn set_balloon(&mut self, balloon_mib: u32) -> Result<(), QemuError> {
        self.require_balloon()?;
        let memory_mib = self.config.memory_mib;
        if balloon_mib >= memory_mib {
            return Err(QemuError::InvalidConfig {
                field: "balloon_mib",
                reason: "must be less than the guest's memory",
            });
        }
        let guest_bytes = u64::from(memory_mib - balloon_mib) << 20;
        self.qmp_execute("balloon", Some(json!({ "value": guest_bytes })))?;
        self.qmp()?.discard_events("BALLOON_CHANGE");
        Ok(())
    }

    /// The balloon's size and the guest's last memory statistics.
    pub fn balloon_stats(&mut self) -> Result<QemuBalloonStats, QemuError> {
        self.require_balloon()?;
        let memory_bytes = u64::from(self.config.memory_mib) << 20;
        let actual = self.qmp_execute("query-balloon", None)?;
        let stats = self.qmp_execute(
            "qom-get",
            Some(json!({
                "path": format!("/machine/peripheral/{BALLOON_ID}"),
                "property": "guest-stats",
            })),
        )?;
        // QEMU announces every change of the balloon; nothing waits for
        // those, so they are not kept.
        self.qmp()?.discard_events("BALLOON_CHANGE");
        Ok(parse_stats(memory_bytes, &actual, &stats))
    }

    fn require_balloon(&self) -> Result<(), QemuError> {
        match self.config.balloon {
            Some(_) => Ok(()),
            None => Err(QemuError::InvalidConfig {
                field: "balloon",
                reason: "is not configured: start the VM with a balloon",
            }),
        }
    }
}

/// [`QemuBalloonStats`] from the replies of `query-balloon` and of
/// `qom-get guest-stats`. QEMU says 2^64 - 1 for a statistic the guest
/// has not reported.
fn parse_stats(memory_bytes: u64, actual: &Value, stats: &Value) -> QemuBalloonStats {
    let stat = |name: &str| stats["stats"][name].as_u64().filter(|&v| v != u64::MAX);
    let actual = actual["actual"].as_u64().unwrap_or(memory_bytes);
    QemuBalloonStats {
        balloon_bytes: memory_bytes.saturating_sub(actual),
        total_bytes: stat("stat-total-memory"),
        free_bytes: stat("stat-free-memory"),
        available_bytes: stat("stat-available-memory"),
        stats_updated_unix: stats["last-update"].as_u64().filter(|&t| t > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_actual_and_guest_stats() {
        let actual = json!({"actual": 384u64 << 20});
        let stats = json!({
            "stats": {
                "stat-total-memory": 500_000_000i64,
                "stat-free-memory": 300_000_000i64,
                "stat-available-memory": u64::MAX,
            },
            "last-update": 1_700_000_000u64,
        });
        let s = parse_stats(512 << 20, &actual, &stats);
        assert_eq!(s.balloon_bytes, 128 << 20);
        assert_eq!(s.total_bytes, Some(500_000_000));
        assert_eq!(s.free_bytes, Some(300_000_000));
        assert_eq!(s.available_bytes, None);
        assert_eq!(s.stats_updated_unix, Some(1_700_000_000));

        // Before the guest reported anything.
        let none = parse_stats(512 << 20, &json!({}), &json!({"last-update": 0}));
        assert_eq!(none, QemuBalloonStats::default());
    }
}
