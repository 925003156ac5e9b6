//! The host's TSC frequency, for the `tsc_early_khz=` hint given to TCG
//! guests.
//!
//! Under TCG on an x86 host the guest's `rdtsc` returns the host's TSC, so the
//! guest TSC ticks at the host's rate. The guest kernel normally measures that
//! rate against the emulated PIT, and that measurement fails when emulation is
//! slowed by host load; with no HPET or ACPI PM timer on `microvm` the kernel
//! then marks the TSC unusable and hangs early in boot. Telling it the rate
//! skips the measurement.

//!
//! Measuring takes about 10 ms. With a cache file ([`QemuConfig::tsc_cache`](crate::QemuConfig::tsc_cache))
//! the figure is measured once per host boot: the file records it with the
//! kernel's `boot_id`, and a figure recorded under another boot, or outside
//! the range a TSC can have, is measured again.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The cache file's usual name, in the directory that holds the per-VM
/// run directories (a per-user runtime directory, emptied at reboot).
pub const TSC_CACHE_FILE: &str = "nook-host-tsc.json";

/// Where the kernel names the current host boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Any TSC outside 100 MHz..20 GHz is not one we understand.
const PLAUSIBLE_KHZ: std::ops::Range<u64> = 100_000..20_000_000;

/// What the cache file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TscCache {
    boot_id: String,
    tsc_khz: u64,
}

/// The host TSC frequency in kHz, or `None` on hosts where the guest TSC
/// is not the host TSC: from `cache` when it holds this host boot's
/// figure, else measured (once per process) and written there.
pub(crate) fn host_tsc_khz(cache: Option<&Path>) -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    let boot = std::fs::read_to_string(BOOT_ID).unwrap_or_default();
    let boot = boot.trim();
    let cached = cache.and_then(|c| read_cache(c, boot));
    let khz = *KHZ.get_or_init(|| cached.or_else(measure));
    if let (Some(path), Some(tsc_khz), None, false) = (cache, khz, cached, boot.is_empty()) {
        write_cache(path, boot, tsc_khz);
    }
    khz
}

/// The cached figure, if `path` holds one for `boot` that a TSC can have.
fn read_cache(path: &Path, boot: &str) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let c: TscCache = serde_json::from_slice(&bytes).ok()?;
    (!boot.is_empty() && c.boot_id == boot && PLAUSIBLE_KHZ.contains(&c.tsc_khz))
        .then_some(c.tsc_khz)
}

/// Records `tsc_khz` for `boot` in `path` (atomically; a cache that cannot
/// be written only costs the next process a measurement).
fn write_cache(path: &Path, boot: &str, tsc_khz: u64) {
    let c = TscCache {
        boot_id: boot.to_string(),
        tsc_khz,
    };
    let Ok(json) = serde_json::to_vec(&c) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = nook_fsutil::write_atomic(path, 0o644, |f| f.write_all(&json)) {
        tracing::debug!(target: "nook::qemu", "cannot cache the host tsc frequency: {e}");
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn measure() -> Option<u64> {
    use std::time::{Duration, Instant};
    fn rdtsc() -> u64 {
        // SAFETY: rdtsc is part of the x86_64 baseline, reads a counter and
        // has no memory effects.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    // A TSC reading paired with the clock, bracketed tightly so a preemption
    // between the two reads does not skew the result.
    fn sample() -> (Instant, u64) {
        let mut best = None;
        for _ in 0..20 {
            let before = Instant::now();
            let c = rdtsc();
            let after = Instant::now();
            let width = after.duration_since(before);
            let mid = before + width / 2;
            if width < Duration::from_micros(10) {
                return (mid, c);
            }
            match best {
                Some((w, _, _)) if w <= width => {}
                _ => best = Some((width, mid, c)),
            }
        }
        best.map(|(_, t, c)| (t, c))
            .unwrap_or_else(|| (Instant::now(), rdtsc()))
    }
    let (t0, c0) = sample();
    std::thread::sleep(Duration::from_millis(10));
    let (t1, c1) = sample();
    let nanos = u64::try_from(t1.duration_since(t0).as_nanos()).ok()?;
    let khz = c1.checked_sub(c0)?.checked_mul(1_000_000)? / nanos.max(1);
    PLAUSIBLE_KHZ.contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn measurement_is_stable_and_plausible() {
        let a = measure().expect("x86_64 host has a TSC");
        let b = measure().expect("x86_64 host has a TSC");
        let diff = a.abs_diff(b) as f64 / a as f64;
        assert!(diff < 0.01, "two measurements differ by {diff}: {a} vs {b}");
    }

    #[test]
    fn the_cache_holds_one_figure_per_host_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host-tsc.json");
        write_cache(&path, "boot-a", 2_596_128);
        assert_eq!(read_cache(&path, "boot-a"), Some(2_596_128));
        assert_eq!(read_cache(&path, "boot-b"), None, "another host boot");
        assert_eq!(read_cache(&path, ""), None);
        write_cache(&path, "boot-a", 5);
        assert_eq!(read_cache(&path, "boot-a"), None, "implausible figure");
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(read_cache(&path, "boot-a"), None);

        // Through the process-wide entry point: the figure this boot gets
        // is written to the cache, and read back from it.
        let boot = std::fs::read_to_string(BOOT_ID).unwrap();
        let fresh = dir.path().join("fresh.json");
        let khz = host_tsc_khz(Some(&fresh)).expect("x86_64 host has a TSC");
        assert_eq!(read_cache(&fresh, boot.trim()), Some(khz));
        assert_eq!(host_tsc_khz(None), Some(khz));
    }
}
