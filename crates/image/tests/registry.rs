//! Pulling from a real registry: Debian's `docker-registry` on loopback.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{sample_image, Registry};
use nook_image::{ImageError, PullOptions, RegistryAuth};

#[test]
fn pull_unpacks_layers_into_tree_and_ext4() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let image = sample_image();
    registry.push(
        "test:1",
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let (tmp, store) = common::store();
    let reference = format!("{}/test:1", registry.host);

    let started = Instant::now();
    let info = store
        .pull(&reference, &PullOptions::default())
        .expect("pull");
    let pull_time = started.elapsed();

    assert_eq!(info.digest, image.digest().to_string());
    assert_eq!(info.reference, reference);
    assert_eq!(info.config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
    assert_eq!(info.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(info.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(info.config.cmd, ["echo hi"]);
    assert_eq!(info.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(info.layers.len(), 3);
    assert!(info.rootfs.is_file());
    assert_eq!(
        std::fs::metadata(&info.rootfs).expect("rootfs").len(),
        info.size
    );
    common::check_sample_ext4(&info.rootfs);

    let tree = tmp.path().join("tree");
    store.unpack_to(&reference, &tree).expect("unpack");
    common::check_sample_tree(&tree);

    // Lookups without the network: by name, digest and digest prefix.
    assert_eq!(
        store.get(&reference).expect("get").map(|i| i.digest),
        Some(info.digest.clone())
    );
    let hex = info.digest.trim_start_matches("sha256:");
    assert!(store.get(&info.digest).expect("get").is_some());
    assert!(store.get(&hex[..12]).expect("get").is_some());
    assert!(store
        .get(&format!("{}/test@{}", registry.host, info.digest))
        .expect("get")
        .is_some());
    assert!(store
        .get(&format!("{}/test:2", registry.host))
        .expect("get")
        .is_none());
    assert_eq!(store.list().expect("list").len(), 1);
    common::assert_blobs_verify(store.root());
    assert!(
        common::dir_is_empty(&store.root().join("tmp")),
        "pull left temporary files"
    );

    let store_bytes = common::store_size(store.root());
    let again = Instant::now();
    let second = store
        .pull(&reference, &PullOptions::default())
        .expect("second pull");
    assert_eq!(second.digest, info.digest);
    eprintln!(
        "measure: pull+unpack+mkfs of the 3-layer test image {:?}; re-pull (manifest only) {:?}; store {} KiB (rootfs {} KiB, blobs {} B)",
        pull_time,
        again.elapsed(),
        store_bytes / 1024,
        info.size / 1024,
        info.content_size
    );

    // Remove the name: the image goes; gc then drops the blobs.
    store.remove(&reference).expect("remove");
    assert!(store.get(&reference).expect("get").is_none());
    assert!(!info.rootfs.exists());
    let report = store.gc().expect("gc");
    assert_eq!(report.blobs_removed, 5, "{report:?}"); // manifest, config, 3 layers
    assert!(common::dir_is_empty(&store.root().join("blobs/sha256")));
    assert!(matches!(
        store.remove(&reference),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn concurrent_pulls_of_one_image_both_succeed() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let image = sample_image();
    registry.push(
        "test:1",
        &image,
        &oci_client::secrets::RegistryAuth::Anonymous,
    );
    let (_tmp, store) = common::store();
    let store = Arc::new(store);
    let reference = format!("{}/test:1", registry.host);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            let reference = reference.clone();
            std::thread::spawn(move || store.pull(&reference, &PullOptions::default()))
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let digests: Vec<String> = results
        .into_iter()
        .map(|r| r.expect("concurrent pull").digest)
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], image.digest().to_string());
    let list = store.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].references, std::slice::from_ref(&reference));
    common::assert_blobs_verify(store.root());
    assert!(
        common::dir_is_empty(&store.root().join("tmp")),
        "pull left temporary files"
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .expect("blobs")
            .count(),
        5
    );
    common::check_sample_ext4(&list[0].rootfs);
    // Two stores (as two processes would) on one directory agree too.
    let other = nook_image::ImageStore::open(store.root()).expect("reopen");
    assert_eq!(
        other.get(&reference).expect("get").map(|i| i.digest),
        Some(digests[0].clone())
    );
}

#[test]
fn index_resolves_to_linux_amd64() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let amd64 = sample_image();
    let arm_layer = common::TestLayer::gzip(
        nook_image::testing::LayerBuilder::new()
            .file("arm", b"arm", 0o644)
            .tar(),
    );
    let arm64 = common::TestImage::new(vec![arm_layer], "arm64");
    let anon = oci_client::secrets::RegistryAuth::Anonymous;
    registry.push("multi:amd64", &amd64, &anon);
    registry.push("multi:arm64", &arm64, &anon);
    registry.push_index("multi:1", &[(&arm64, "arm64"), (&amd64, "amd64")]);
    let (_tmp, store) = common::store();
    let info = store
        .pull(
            &format!("{}/multi:1", registry.host),
            &PullOptions::default(),
        )
        .expect("pull index");
    assert_eq!(info.digest, amd64.digest().to_string());

    registry.push_index("multi:arm-only", &[(&arm64, "arm64")]);
    let err = store
        .pull(
            &format!("{}/multi:arm-only", registry.host),
            &PullOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err:?}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    let err = store
        .pull(
            &format!("{}/multi:arm64", registry.host),
            &PullOptions::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("not linux/amd64") || format!("{err:?}").contains("Platform"),
        "{err:?}"
    );
}

#[test]
fn basic_auth_registry() {
    // bcrypt of "secret" for user "nook" (generated with the bcrypt crate).
    let htpasswd = format!("nook:{}\n", bcrypt::hash("secret", 4).expect("bcrypt"));
    let Some(registry) = Registry::start(Some(&htpasswd)) else {
        return;
    };
    let image = sample_image();
    let creds = oci_client::secrets::RegistryAuth::Basic("nook".into(), "secret".into());
    registry.push("private:1", &image, &creds);
    let (_tmp, store) = common::store();
    let reference = format!("{}/private:1", registry.host);

    let err = store.pull(&reference, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(store.get(&reference).expect("get").is_none());

    let opts = PullOptions {
        auth: RegistryAuth::Basic {
            username: "nook".into(),
            password: "secret".into(),
        },
        ..PullOptions::default()
    };
    let info = store.pull(&reference, &opts).expect("pull with basic auth");
    assert_eq!(info.digest, image.digest().to_string());
}

#[test]
fn unreachable_registry_fails_cleanly() {
    let (_tmp, store) = common::store();
    let reference = format!("127.0.0.1:{}/nothing:1", common::free_port());
    let err = store.pull(&reference, &PullOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("check the image name"), "{err}");
    assert!(store.list().expect("list").is_empty());
}
