//! Prepares real assets from Debian's cloud kernel package into a temporary
//! cache: downloads ~27 MB from the configured apt mirror. Skips (with a
//! printed reason) on hosts without apt or busybox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nook_assets::{prepare, refresh, AssetsConfig, KernelSource, MODULES_MANIFEST};

fn skip_reason() -> Option<String> {
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    let apt = Command::new("apt-cache")
        .args(["show", "--no-all-versions", nook_assets::DEFAULT_PACKAGE])
        .output();
    match apt {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => None,
        Ok(_) => Some(format!(
            "apt knows no {} (run apt-get update)",
            nook_assets::DEFAULT_PACKAGE
        )),
        Err(e) => Some(format!("apt-cache cannot run: {e}")),
    }
}

/// Minimal newc reader (names, modes, data) for checking the result.
fn read_cpio(buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let field = |at: usize, i: usize| {
        let s = std::str::from_utf8(&buf[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        assert_eq!(&buf[at..at + 6], b"070701");
        let (mode, size, namesize) = (field(at, 1), field(at, 6), field(at, 11));
        let name = String::from_utf8(buf[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
        let data_at = (at + 110 + namesize).div_ceil(4) * 4;
        let data = buf[data_at..data_at + size].to_vec();
        at = (data_at + size).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            return out;
        }
        out.push((name, mode as u32, data));
    }
}

/// Shows the crate's debug events (what was downloaded, built, reused)
/// with `cargo test -- --nocapture`.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_test_writer()
        .try_init();
}

fn config(home: &Path, agent: PathBuf) -> AssetsConfig {
    AssetsConfig {
        home: home.to_owned(),
        progress: false,
        ..AssetsConfig::new(agent)
    }
}

#[test]
fn prepares_debian_cloud_kernel_then_reuses_and_repairs() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nook-home");
    let agent = dir.path().join("agent");
    std::fs::write(&agent, b"#!/bin/sh\necho not really an agent\n").unwrap();
    let cfg = config(&home, agent.clone());
    assert!(matches!(cfg.kernel, KernelSource::Debian { .. }));

    // 1. Cold: download, extract, build.
    let t = Instant::now();
    let first = prepare(&cfg).unwrap();
    println!("first prepare: {:?} ({:?})", t.elapsed(), first.work);
    assert!(first.work.downloaded);
    assert!(first.work.built_initramfs);
    let kernel_len = std::fs::metadata(&first.kernel).unwrap().len();
    assert!(kernel_len > 1 << 20, "kernel is {kernel_len} bytes");
    assert!(first.kernel.starts_with(home.join("kernels")));
    assert!(first.kernel_config.as_ref().is_some_and(|c| c.exists()));
    assert!(
        first.kernel_release.contains("cloud-amd64"),
        "{}",
        first.kernel_release
    );

    // The bzImage announces the same release the package named.
    let head = std::fs::read(&first.kernel).unwrap();
    let ptr = u16::from_le_bytes([head[0x20E], head[0x20F]]) as usize + 0x200;
    assert!(head[ptr..].starts_with(first.kernel_release.as_bytes()));

    // Modules: the virtio transport and console with their deps, deps first.
    let pos = |m: &str| {
        first
            .modules
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} not in {:?}", first.modules))
    };
    assert!(pos("virtio") < pos("virtio_ring") || pos("virtio_ring") < pos("virtio_mmio"));
    assert!(pos("virtio") < pos("virtio_mmio"));
    assert!(pos("virtio_ring") < pos("virtio_mmio"));
    assert!(pos("virtio") < pos("virtio_console"));
    assert!(pos("virtio_ring") < pos("virtio_console"));

    // 2. The initramfs has /init, busybox links and the modules in order.
    let cpio = std::fs::read(&first.initramfs).unwrap();
    let entries = read_cpio(&cpio);
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("{name} not in initramfs"))
    };
    assert_eq!(get("init").1, 0o100755);
    assert_eq!(get("init").2, std::fs::read(&agent).unwrap());
    assert_eq!(get("bin/sh").1 & 0o170000, 0o120000, "bin/sh is a symlink");
    assert_eq!(get("bin/sh").2, b"/bin/busybox");
    assert_eq!(get("bin/busybox").2, std::fs::read("/bin/busybox").unwrap());
    let manifest = String::from_utf8(get(MODULES_MANIFEST).2.clone()).unwrap();
    let listed: Vec<&str> = manifest.lines().collect();
    assert_eq!(listed.len(), first.modules.len());
    for (line, name) in listed.iter().zip(&first.modules) {
        let file = line.trim_start_matches('/');
        let stem = file.rsplit('/').next().unwrap().trim_end_matches(".ko");
        assert_eq!(&stem.replace('-', "_"), name, "manifest order");
        let module = get(file);
        assert!(
            module.2.starts_with(b"\x7fELF"),
            "{file} is a plain ELF module"
        );
        assert!(file.starts_with(&format!("lib/modules/{}/", first.kernel_release)));
    }

    // 3. Warm: nothing downloaded, nothing built.
    let t = Instant::now();
    let second = prepare(&cfg).unwrap();
    let warm = t.elapsed();
    println!("second prepare: {warm:?} ({:?})", second.work);
    assert!(!second.work.downloaded);
    assert!(!second.work.built_initramfs);
    assert!(!second.work.verified, "served from the index");
    assert_eq!(second.kernel, first.kernel);
    assert_eq!(second.initramfs, first.initramfs);
    assert_eq!(second.modules, first.modules);

    // 4. A changed agent rebuilds the initramfs but downloads nothing.
    std::fs::write(&agent, b"#!/bin/sh\necho a newer agent\n").unwrap();
    let t = Instant::now();
    let third = prepare(&cfg).unwrap();
    println!(
        "prepare after agent change: {:?} ({:?})",
        t.elapsed(),
        third.work
    );
    assert!(!third.work.downloaded);
    assert!(third.work.built_initramfs);
    assert_ne!(third.initramfs, first.initramfs);

    // 5. A truncated kernel is detected and fetched again, not used.
    let good = std::fs::read(&third.kernel).unwrap();
    std::fs::write(&third.kernel, &good[..good.len() / 2]).unwrap();
    let t = Instant::now();
    let repaired = prepare(&cfg).unwrap();
    println!(
        "prepare after truncation: {:?} ({:?})",
        t.elapsed(),
        repaired.work
    );
    assert!(repaired.work.downloaded, "damaged kernel re-fetched");
    assert_eq!(std::fs::read(&repaired.kernel).unwrap(), good);
    assert!(!repaired.work.built_initramfs, "initramfs inputs unchanged");
    assert_eq!(
        prepare(&cfg).unwrap().work,
        Default::default(),
        "warm again"
    );

    // 6. More modules: the cached package is extended; the agent, busybox
    //    and the first modules are as before.
    let mut more = cfg.clone();
    more.modules.push("virtio-rng".into());
    let extended = prepare(&more).unwrap();
    println!("prepare with virtio-rng: {:?}", extended.work);
    assert!(extended.modules.contains(&"virtio_rng".to_owned()));
    assert!(extended.work.built_initramfs);
    // The first request is still served from the fast path: extending the
    // cached package left its kernel file alone.
    let again = prepare(&cfg).unwrap();
    assert_eq!(again.work, Default::default());

    // 7. refresh re-resolves with apt; same version: nothing downloaded.
    let refreshed = refresh(&cfg).unwrap();
    println!("refresh: {:?}", refreshed.work);
    assert_eq!(refreshed.kernel, repaired.kernel);
    assert!(!refreshed.work.built_initramfs);
    assert_eq!(
        prepare(&cfg).unwrap().work,
        Default::default(),
        "warm after refresh"
    );
    assert_eq!(
        prepare(&more).unwrap().work,
        Default::default(),
        "other requests too"
    );

    // 8. Nothing is left in the scratch directory.
    let leftovers: Vec<_> = std::fs::read_dir(home.join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn errors_say_what_to_do() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, b"agent").unwrap();

    let mut cfg = config(dir.path(), agent.clone());
    cfg.kernel = KernelSource::Debian {
        package: "linux-image-nook-test-no-such-package".into(),
    };
    let err = prepare(&cfg).unwrap_err().to_string();
    println!("{err}");
    assert!(
        err.contains("linux-image-nook-test-no-such-package"),
        "{err}"
    );
    assert!(err.contains("--kernel FILE"), "{err}");

    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let mut cfg = config(dir.path(), dir.path().join("no-agent"));
    cfg.kernel = KernelSource::Local {
        kernel: kernel.clone(),
        modules_dir: None,
    };
    let err = prepare(&cfg).unwrap_err().to_string();
    println!("{err}");
    assert!(
        err.contains("guest agent") && err.contains("NOOK_AGENT"),
        "{err}"
    );
    // A dynamically linked agent can never be a guest's /init.
    cfg.agent = "/bin/ls".into();
    let err = prepare(&cfg).unwrap_err().to_string();
    println!("{err}");
    assert!(
        err.contains("/bin/ls") && err.contains("dynamically linked"),
        "{err}"
    );

    let mut cfg = config(dir.path(), agent);
    cfg.kernel = KernelSource::Local {
        kernel,
        modules_dir: None,
    };
    cfg.busybox = dir.path().join("no-busybox");
    let err = prepare(&cfg).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("busybox-static"), "{err}");
}
