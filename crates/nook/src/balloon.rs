//! The memory balloon: a virtio-balloon device (QEMU's on the qemu engine,
//! the VMM's own on the kvm engine) through which the host asks a guest for
//! memory back, and through which the guest reports its free pages and
//! memory statistics. Off by default ([`crate::VmConfig::balloon`]).

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::vm::Vm;

/// A VM's memory balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// Let the guest report its free pages (`VIRTIO_BALLOON_F_REPORTING`):
    /// the host discards them as they come, without a balloon target.
    /// Linux reports free blocks of 2 MiB or more about two seconds after
    /// they were freed.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Seconds between the guest's memory statistics updates (0: none).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_s: u32,
}

fn default_stats_interval() -> u32 {
    DEFAULT_STATS_INTERVAL_S
}

/// The statistics interval `--balloon` gives.
pub const DEFAULT_STATS_INTERVAL_S: u32 = 1;

impl BalloonConfig {
    /// A balloon with free page reporting on and statistics every second:
    /// what `--balloon` asks for.
    pub fn reporting() -> BalloonConfig {
        BalloonConfig {
            free_page_reporting: true,
            stats_interval_s: DEFAULT_STATS_INTERVAL_S,
        }
    }
}

/// A VM's memory as the guest and the host see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryStats {
    /// The guest's configured memory.
    pub memory_mib: u32,
    /// Memory the guest has put into the balloon so far.
    pub balloon_mib: u32,
    /// The guest's total memory as it counts it (`MemTotal`), once it
    /// reported statistics.
    pub guest_total_bytes: Option<u64>,
    /// The guest's free memory (`MemFree`).
    pub guest_free_bytes: Option<u64>,
    /// Memory the guest could use without swapping (`MemAvailable`).
    pub guest_available_bytes: Option<u64>,
    /// Host memory the VM's guest RAM and engine hold: the QEMU process's
    /// resident set (anonymous, shared and file pages) on the qemu engine,
    /// the resident pages of guest memory on the kvm engine.
    pub host_rss_bytes: Option<u64>,
}

impl Vm {
    /// Asks the guest to put `balloon_mib` MiB of its memory into the
    /// balloon, which the host then frees (0 gives it all back). Returns at
    /// once: the guest inflates at its own pace; [`Vm::memory_stats`] shows
    /// how far it got. Fails when the VM has no balloon or `balloon_mib`
    /// is not less than its memory.
    pub fn set_balloon(&self, balloon_mib: u32) -> Result<(), VmError> {
        check_target(self.cfg.balloon.as_ref(), self.cfg.memory_mib, balloon_mib)?;
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_balloon(balloon_mib)
    }

    /// The balloon's size, the guest's last memory statistics, and the
    /// host memory the VM holds. Fails when the VM has no balloon.
    pub fn memory_stats(&self) -> Result<MemoryStats, VmError> {
        if self.cfg.balloon.is_none() {
            return Err(VmError::NoBalloon);
        }
        let mut stats = self
            .machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory_stats()?;
        stats.memory_mib = self.cfg.memory_mib;
        Ok(stats)
    }

    /// The VM's balloon configuration (`None`: it has none).
    pub fn balloon(&self) -> Option<&BalloonConfig> {
        self.cfg.balloon.as_ref()
    }
}

/// Checks a balloon target against the VM.
fn check_target(
    balloon: Option<&BalloonConfig>,
    memory_mib: u32,
    balloon_mib: u32,
) -> Result<(), VmError> {
    if balloon.is_none() {
        return Err(VmError::NoBalloon);
    }
    if balloon_mib >= memory_mib {
        return Err(VmError::BalloonTooLarge {
            balloon_mib,
            memory_mib,
        });
    }
    Ok(())
}

/// The resident set of process `pid` in bytes (`VmRSS` of
/// `/proc/PID/status`: anonymous, shared memory and file pages).
pub(crate) fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|kib| kib << 10)
}

/// A `NAME:   N kB` field of a `/proc/PID/status` text.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_a_balloon_and_room() {
        let b = BalloonConfig::reporting();
        assert!(check_target(Some(&b), 512, 0).is_ok());
        assert!(check_target(Some(&b), 512, 511).is_ok());
        assert!(matches!(
            check_target(Some(&b), 512, 512),
            Err(VmError::BalloonTooLarge {
                balloon_mib: 512,
                memory_mib: 512
            })
        ));
        assert!(matches!(
            check_target(None, 512, 1),
            Err(VmError::NoBalloon)
        ));
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let text = "Name:\tqemu\nVmRSS:\t  123456 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(123456));
        assert_eq!(status_kib(text, "VmSwap:"), None);
        let own = process_rss_bytes(std::process::id()).unwrap();
        assert!(own > 0 && own % 1024 == 0, "{own}");
    }

    #[test]
    fn config_reads_with_defaults() {
        let b: BalloonConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            b,
            BalloonConfig {
                free_page_reporting: false,
                stats_interval_s: DEFAULT_STATS_INTERVAL_S
            }
        );
    }
}
