//! `nook::Pool` on the kvm engine with a synthetic guest (runs wherever
//! `/dev/kvm` works, at any ring-0 speed): clones come from KVM VMs made
//! ahead of time, and a discarded clone's KVM VM serves the next one.

mod support;

use std::time::{Duration, Instant};

use nook::{Pool, PoolConfig, PoolStats};
use support::kvm_snapshot::idle_kvm_snapshot;

fn wait_for(pool: &Pool, what: &str, f: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = pool.stats();
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {s:?} ({:?})",
            pool.last_error()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kvm_pool_refills_from_ready_vms_and_reuses_discarded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("idle");
    if idle_kvm_snapshot(&snap, 64).is_none() {
        return;
    }
    let mut cfg = PoolConfig::new(&snap);
    cfg.min = 1;
    cfg.max = 3;
    let pool = Pool::new(cfg).unwrap();
    // One clone idle, and one KVM VM made ahead for the next restore.
    let s = wait_for(&pool, "an idle clone and a ready kvm vm", |s| {
        s.idle == 1 && s.kvm_ready == 1
    });
    assert_eq!(s.restored, 1);
    for round in 1..=5u64 {
        let vm = pool.acquire(Duration::from_secs(10)).unwrap();
        assert_eq!(vm.engine().label(), "kvm");
        // The refill takes the ready KVM VM...
        let s = wait_for(&pool, "the refill", |s| s.idle == 1 && s.restored > round);
        assert_eq!(s.in_use, 1);
        drop(vm);
        // ...and the discarded clone's KVM VM is kept for the next one.
        let s = wait_for(&pool, "a ready kvm vm again", |s| {
            s.kvm_ready >= 1 && s.in_use == 0
        });
        assert_eq!(s.kvm_reused, round, "{s:?}");
        assert!(s.kvm_ready <= 3, "{s:?}");
    }
    drop(pool);
}
