//! The host's TSC frequency, for the `tsc_early_khz=` hint given to TCG
//! guests.
//!
//! Under TCG on an x86 host the guest's `rdtsc` returns the host's TSC, so the
//! guest TSC ticks at the host's rate. The guest kernel normally measures that
//! rate against the emulated PIT, and that measurement fails when emulation is
//! slowed by host load; with no HPET or ACPI PM timer on `microvm` the kernel
//! then marks the TSC unusable and hangs early in boot. Telling it the rate
//! skips the measurement.

use std::sync::OnceLock;

/// The host TSC frequency in kHz, measured once per process (about 10 ms),
/// or `None` on hosts where the guest TSC is not the host TSC.
pub(crate) fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure)
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
    // Anything outside 100 MHz..20 GHz is not a TSC we understand.
    (100_000..20_000_000).contains(&khz).then_some(khz)
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
        assert_eq!(host_tsc_khz(), host_tsc_khz());
    }
}
