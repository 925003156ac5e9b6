//! The memory balloon end to end on the qemu engine (TCG here): memory a
//! guest touched and freed goes back to the host when the balloon inflates
//! or when the guest reports its free pages, and a ballooned VM's snapshot
//! restores. The kvm engine's device is tested with synthetic guests in
//! `crates/vmm`.

use std::time::{Duration, Instant};

use nook::{BalloonConfig, EngineKind, MemoryStats, Vm, VmConfig};

mod support;
use support::guest::{ready, sh};

const MIB: u64 = 1 << 20;
/// Guest memory of these tests: room for 400 MiB of data and a kernel.
const MEMORY_MIB: u32 = 640;
/// The host memory a test must see come back.
const RETURNED_MIB: u64 = 300;

fn cfg(balloon: BalloonConfig) -> VmConfig {
    VmConfig {
        engine: EngineKind::Qemu,
        memory_mib: MEMORY_MIB,
        progress: false,
        balloon: Some(balloon),
        ..VmConfig::default()
    }
}

/// Has the guest write 400 MiB into a tmpfs (memory the guest touched,
/// so the host backs it) and returns the host memory the VM holds then.
fn touch_400_mib(vm: &Vm) -> u64 {
    sh(
        vm,
        "mkdir -p /mnt/fill && mount -t tmpfs -o size=450m fill /mnt/fill && \
         dd if=/dev/zero of=/mnt/fill/data bs=1M count=400 2>/dev/null",
    );
    let rss = host_rss(vm);
    assert!(
        rss >= 400 * MIB,
        "the guest's 400 MiB should be resident on the host: {} MiB",
        rss / MIB
    );
    rss
}

/// Frees the 400 MiB of [`touch_400_mib`] in the guest.
fn free_400_mib(vm: &Vm) {
    sh(vm, "rm /mnt/fill/data && umount /mnt/fill");
}

fn host_rss(vm: &Vm) -> u64 {
    stats(vm).host_rss_bytes.expect("host rss")
}

fn stats(vm: &Vm) -> MemoryStats {
    vm.memory_stats().expect("memory stats")
}

/// Polls until `done` holds, at most `limit`; returns the last stats.
fn wait_for(vm: &Vm, limit: Duration, done: impl Fn(&MemoryStats) -> bool) -> MemoryStats {
    let deadline = Instant::now() + limit;
    loop {
        let s = stats(vm);
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until the balloon reaches `target_mib` or has not moved for five
/// seconds (the guest gives no more), at most `limit`. Only for a target
/// the guest may not reach: a guest starved of CPU on a loaded host can
/// also stand still for five seconds, so a reachable target is waited for
/// with [`wait_for`].
fn wait_balloon(vm: &Vm, target_mib: u32, limit: Duration) -> MemoryStats {
    let deadline = Instant::now() + limit;
    let mut last = stats(vm);
    let mut moved = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let s = stats(vm);
        if s.balloon_mib != last.balloon_mib {
            moved = Instant::now();
        }
        last = s;
        if s.balloon_mib == target_mib
            || moved.elapsed() > Duration::from_secs(5)
            || Instant::now() >= deadline
        {
            return s;
        }
    }
}

#[test]
fn inflating_the_balloon_returns_freed_guest_memory_to_the_host() {
    if !ready() {
        return;
    }
    let plain = BalloonConfig {
        free_page_reporting: false,
        stats_interval_s: 1,
    };
    let vm = Vm::start(cfg(plain)).expect("boot");
    assert_eq!(stats(&vm).balloon_mib, 0);
    let touched = touch_400_mib(&vm);
    free_400_mib(&vm);

    // Nearly all of the guest's memory into the balloon: the guest gives
    // what it can spare.
    let target = MEMORY_MIB - 128;
    let started = Instant::now();
    vm.set_balloon(target).expect("inflate");
    let inflated = wait_balloon(&vm, target, Duration::from_secs(120));
    let took = started.elapsed();
    let after = host_rss(&vm);
    eprintln!(
        "balloon: {} MiB inflated in {took:?}; qemu rss {} MiB -> {} MiB",
        inflated.balloon_mib,
        touched / MIB,
        after / MIB
    );
    assert!(
        u64::from(inflated.balloon_mib) >= RETURNED_MIB,
        "the balloon reached only {} MiB",
        inflated.balloon_mib
    );
    assert!(
        touched.saturating_sub(after) >= RETURNED_MIB * MIB,
        "qemu's rss fell by {} MiB only ({} -> {} MiB)",
        touched.saturating_sub(after) / MIB,
        touched / MIB,
        after / MIB
    );
    let total = inflated.guest_total_bytes.expect("guest statistics");
    assert!(total > 0 && total <= u64::from(MEMORY_MIB) * MIB, "{total}");

    // Deflated, the guest has its memory back and works on.
    vm.set_balloon(0).expect("deflate");
    let deflated = wait_for(&vm, Duration::from_secs(60), |s| s.balloon_mib == 0);
    assert_eq!(deflated.balloon_mib, 0);
    assert_eq!(sh(&vm, "echo alive"), "alive\n");
}

#[test]
fn free_page_reporting_returns_freed_memory_without_a_target() {
    if !ready() {
        return;
    }
    let vm = Vm::start(cfg(BalloonConfig::reporting())).expect("boot");
    let touched = touch_400_mib(&vm);
    free_400_mib(&vm);
    let started = Instant::now();
    let reported = wait_for(&vm, Duration::from_secs(60), |s| {
        s.host_rss_bytes
            .is_some_and(|rss| rss + RETURNED_MIB * MIB <= touched)
    });
    let rss = reported.host_rss_bytes.expect("host rss");
    eprintln!(
        "free page reporting: qemu rss {} MiB with the data, {} MiB {:?} after the free",
        touched / MIB,
        rss / MIB,
        started.elapsed()
    );
    assert_eq!(reported.balloon_mib, 0, "no balloon target was set");
    assert!(
        rss + RETURNED_MIB * MIB <= touched,
        "the guest freed 400 MiB and reported it, yet qemu's rss fell only from {} to {} MiB",
        touched / MIB,
        rss / MIB
    );
}

#[test]
fn a_ballooned_vm_snapshot_restores_and_runs() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("ballooned");
    let plain = BalloonConfig {
        free_page_reporting: false,
        stats_interval_s: 1,
    };
    {
        let vm = Vm::start(cfg(plain)).expect("boot");
        vm.set_balloon(128).expect("inflate");
        let s = wait_for(&vm, Duration::from_secs(60), |s| s.balloon_mib == 128);
        assert_eq!(s.balloon_mib, 128);
        sh(&vm, "echo kept > /tmp/state");
        vm.snapshot(&snap).expect("snapshot");
    }
    let clone = Vm::restore(&snap, &VmConfig::default()).expect("restore");
    assert_eq!(clone.balloon(), Some(&plain));
    assert_eq!(sh(&clone, "cat /tmp/state"), "kept\n");
    assert_eq!(stats(&clone).balloon_mib, 128, "the balloon came along");
    clone.set_balloon(0).expect("deflate the clone");
    let s = wait_for(&clone, Duration::from_secs(60), |s| s.balloon_mib == 0);
    assert_eq!(s.balloon_mib, 0);
    assert_eq!(sh(&clone, "echo alive"), "alive\n");
}
