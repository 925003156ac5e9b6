//! Snapshots, restored clones and pools, end to end on real guests (the
//! qemu engine under TCG here; kvm where it runs at hardware speed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nook::{Pool, PoolConfig, Vm, VmConfig};

mod support;
use support::guest::{ready, sh};

fn cfg() -> VmConfig {
    VmConfig {
        progress: false,
        ..VmConfig::default()
    }
}

/// qemu processes whose command line names `needle`.
fn qemu_count(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let c = String::from_utf8_lossy(&c);
            c.contains("qemu-system") && c.contains(needle)
        })
        .count()
}

#[test]
fn restored_clones_run_with_fresh_clock_and_entropy() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("warm");
    {
        let vm = Vm::start(cfg()).expect("boot");
        sh(&vm, "echo warmed > /tmp/state");
        // The snapshot's clock is an hour behind the host's: a clone that
        // kept it is far outside the window checked below, however long
        // a loaded host takes to deliver the resync.
        sh(&vm, "date -s @$(( $(date +%s) - 3600 )) > /dev/null");
        vm.snapshot(&snap).expect("snapshot");
        // The source keeps running after the snapshot.
        assert_eq!(sh(&vm, "cat /tmp/state"), "warmed\n");
    }
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    // Each clone's clock is set to the host's time when it was restored,
    // so it reads at least this.
    let restored_at = now();
    let a = Vm::restore(&snap, &cfg()).expect("restore a");
    let b = Vm::restore(&snap, &cfg()).expect("restore b");
    for vm in [&a, &b] {
        assert_eq!(
            sh(vm, "cat /tmp/state"),
            "warmed\n",
            "clones carry the snapshot's state"
        );
        let guest: i64 = sh(vm, "date +%s").trim().parse().unwrap();
        let after = now();
        assert!(
            guest >= restored_at - 1 && guest <= after + 1,
            "guest clock {guest} is not the host's since the restore [{restored_at}, {after}] \
             (the snapshot's is an hour behind)"
        );
    }
    // Writes in one clone are invisible in the other.
    sh(&a, "echo a > /tmp/only-a");
    assert_eq!(
        sh(&b, "cat /tmp/only-a 2>/dev/null || echo absent"),
        "absent\n"
    );
    let ra = sh(&a, "head -c 16 /dev/urandom | od -x");
    let rb = sh(&b, "head -c 16 /dev/urandom | od -x");
    assert_ne!(ra, rb, "two clones produced the same random bytes");
}

#[test]
fn pool_serves_sequential_acquires_and_cleans_up() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("base");
    {
        let vm = Vm::start(cfg()).expect("boot");
        vm.snapshot(&snap).expect("snapshot");
    }
    let mut pc = PoolConfig::new(&snap);
    pc.min = 2;
    pc.max = 4;
    pc.vm = cfg();
    let pool = Pool::new(pc).expect("pool");
    for i in 0..20 {
        let vm = pool.acquire(Duration::from_secs(120)).expect("acquire");
        let s = pool.stats();
        assert!(
            s.in_use >= 1 && s.alive <= 4 && s.alive >= s.idle + s.in_use,
            "{s:?}"
        );
        assert_eq!(sh(&vm, &format!("echo run{i}")), format!("run{i}\n"));
        // Restore-on-release: nobody sees the previous user's files.
        assert_eq!(
            sh(
                &vm,
                "cat /tmp/mark 2>/dev/null || echo clean; echo used > /tmp/mark"
            ),
            "clean\n"
        );
    }
    let s = pool.stats();
    assert_eq!(s.in_use, 0);
    assert!(s.alive <= 4);
    assert!(s.restored >= 20, "{s:?}");
    let snap_name = snap.to_string_lossy().into_owned();
    drop(pool);
    // Restored QEMUs name the snapshot's state in their command line.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while qemu_count(&snap_name) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pool VMs outlived the pool"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
