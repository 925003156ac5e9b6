//! Several preparers on one cache at once: threads and real processes. The
//! cache lock lets exactly one of them build; the others wait and then find
//! the work done. A local kernel file keeps these tests off the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nook_assets::{prepare, AssetsConfig, KernelSource};

/// Set in child processes: the directory holding `home`, `vmlinuz`, `agent`.
const CHILD_ENV: &str = "NOOK_ASSETS_TEST_CHILD_DIR";

fn busybox_missing() -> bool {
    if Path::new("/bin/busybox").exists() {
        return false;
    }
    eprintln!("skipped: /bin/busybox is missing (apt-get install busybox-static)");
    true
}

fn setup(dir: &Path) {
    std::fs::write(dir.join("vmlinuz"), b"not a real kernel").unwrap();
    std::fs::write(dir.join("agent"), b"agent").unwrap();
}

fn config(dir: &Path) -> AssetsConfig {
    AssetsConfig {
        home: dir.join("home"),
        kernel: KernelSource::Local {
            kernel: dir.join("vmlinuz"),
            modules_dir: None,
        },
        progress: false,
        ..AssetsConfig::new(dir.join("agent"))
    }
}

#[test]
fn concurrent_threads_share_one_cache() {
    if busybox_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cfg = config(dir.path());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| prepare(&cfg))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let built = results.iter().filter(|a| a.work.built_initramfs).count();
    assert_eq!(built, 1, "exactly one caller builds the initramfs");
    // The others waited on the lock, then found the work done.
    let idle = results
        .iter()
        .filter(|a| a.work == Default::default())
        .count();
    assert_eq!(idle, 3);
    assert!(results.windows(2).all(|w| w[0].initramfs == w[1].initramfs));
    assert_eq!(prepare(&cfg).unwrap().work, Default::default());
}

/// Run by `concurrent_processes_share_one_cache` in child processes.
#[test]
#[ignore = "helper process of concurrent_processes_share_one_cache"]
fn child_prepare() {
    let dir = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let assets = prepare(&config(&dir)).unwrap();
    println!(
        "CHILD built={} initramfs={}",
        assets.work.built_initramfs,
        assets.initramfs.display()
    );
}

#[test]
fn concurrent_processes_share_one_cache() {
    if busybox_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_prepare", "--ignored", "--nocapture"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut reports = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("CHILD "))
            .unwrap_or_else(|| panic!("no report in {stdout}"))
            .to_owned();
        reports.push(line);
    }
    println!("{reports:#?}");
    let built = reports.iter().filter(|r| r.contains("built=true")).count();
    assert_eq!(built, 1, "exactly one process builds the initramfs");
    let image = |r: &String| r.split("initramfs=").nth(1).map(str::to_owned);
    assert!(reports.windows(2).all(|w| image(&w[0]) == image(&w[1])));
    assert_eq!(
        prepare(&config(dir.path())).unwrap().work,
        Default::default()
    );
}
