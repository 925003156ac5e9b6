//! Debian images built with mmdebstrap. Slow and needs a Debian mirror:
//! opt in with NOOK_SLOW_TESTS=1.

mod common;

use std::time::Instant;

#[test]
fn builds_and_caches_a_debian_image() {
    if std::env::var("NOOK_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipping builds_and_caches_a_debian_image: slow, set NOOK_SLOW_TESTS=1 to run it"
        );
        return;
    }
    if std::process::Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping builds_and_caches_a_debian_image: mmdebstrap is not installed (apt-get install mmdebstrap)");
        return;
    }
    let (_tmp, store) = common::store();
    let packages = vec!["jq".to_owned()];
    let started = Instant::now();
    let info = store
        .build_debian("deb-test", "bookworm", &packages, true)
        .expect("build Debian image");
    let build_time = started.elapsed();
    assert_eq!(info.reference, "deb-test");
    assert!(info.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(info.config.cmd, ["/bin/bash"]);

    if let Some((os_release, _)) = common::debugfs(&info.rootfs, "cat /usr/lib/os-release") {
        assert!(os_release.contains("bookworm"), "{os_release}");
        let (jq, err) = common::debugfs(&info.rootfs, "stat /usr/bin/jq").expect("debugfs");
        assert!(
            jq.contains("Type: regular"),
            "jq missing from the image: {err}"
        );
        let (sh, _) = common::debugfs(&info.rootfs, "stat /usr/bin/sh").expect("debugfs");
        assert!(
            sh.contains("Type: symlink") || sh.contains("Type: regular"),
            "{sh}"
        );
    } else {
        eprintln!("skipping debugfs checks: debugfs is not installed");
    }

    // Same recipe (order and duplicates do not matter): cached, no rebuild.
    let again = Instant::now();
    let packages2 = vec!["jq".to_owned(), "jq".to_owned()];
    let cached = store
        .build_debian("deb-test2", "bookworm", &packages2, false)
        .expect("cached build");
    let cached_time = again.elapsed();
    assert_eq!(cached.digest, info.digest);
    assert!(
        cached_time.as_secs() < 5,
        "cached build took {cached_time:?}"
    );
    assert!(store.get("deb-test").expect("get").is_some());
    assert!(store.get("deb-test2").expect("get").is_some());
    eprintln!(
        "measure: Debian bookworm minbase + jq built in {build_time:?} (rootfs {} MiB), cached rebuild {cached_time:?}",
        info.size >> 20
    );
}

#[test]
fn rejects_bad_debian_arguments() {
    let (_tmp, store) = common::store();
    let err = store
        .build_debian("ok", "bookworm", &["--force-yes".to_owned()], false)
        .unwrap_err();
    assert!(err.to_string().contains("package"), "{err}");
    let err = store
        .build_debian("-x", "bookworm", &[], false)
        .unwrap_err();
    assert!(err.to_string().contains("image name"), "{err}");
}
