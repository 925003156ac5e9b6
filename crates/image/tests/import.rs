//! Importing OCI layouts and docker archives, and refusing hostile layers.

mod common;

use std::path::Path;

use common::{sample_image, TestImage, TestLayer};
use nook_image::layer::{LayerBlobError, LayerError};
use nook_image::testing::LayerBuilder;
use nook_image::{Digest, ImageError};
use serde_json::json;

/// Writes a legacy `docker save` archive of `image` tagged `tags`, with
/// uncompressed layers as `<id>/layer.tar` (the last one a symlink to the
/// first when `dedup_last` is set, as docker does for repeated layers).
fn write_docker_archive(path: &Path, image: &TestImage, tags: &[&str]) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, data).expect("append");
    };
    let config_name = format!("{}.json", Digest::of_bytes(&image.config).hex());
    let mut layer_names = Vec::new();
    for (i, l) in image.layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, &l.blob);
        layer_names.push(name);
    }
    add(&config_name, &image.config);
    let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]);
    add("manifest.json", manifest.to_string().as_bytes());
    std::fs::write(path, tar.into_inner().expect("tar")).expect("write archive");
}

/// The sample image with plain (uncompressed) layers, as docker save has them.
fn sample_plain() -> TestImage {
    let gz = sample_image();
    let layers = gz
        .layers
        .iter()
        .map(|l| {
            let tar = match l.media_type {
                nook_image::manifest::OCI_LAYER_ZSTD => {
                    zstd::decode_all(&l.blob[..]).expect("zstd")
                }
                _ => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&l.blob[..]),
                        &mut out,
                    )
                    .expect("gunzip");
                    out
                }
            };
            TestLayer::plain(tar)
        })
        .collect();
    TestImage::new(layers, "amd64")
}

#[test]
fn imports_docker_archive() {
    let (tmp, store) = common::store();
    let archive = tmp.path().join("image.tar");
    let image = sample_plain();
    write_docker_archive(&archive, &image, &["imported:1", "imported:latest"]);
    let info = store
        .import_docker_archive(&archive)
        .expect("import docker archive");
    assert_eq!(info.reference, "docker.io/library/imported:1");
    assert_eq!(info.references.len(), 2);
    assert_eq!(info.config.working_dir.as_deref(), Some("/work"));
    assert!(store.get("imported:1").expect("get").is_some());
    assert!(
        store.get("imported").expect("get").is_some(),
        "the latest tag is found by bare name"
    );
    common::check_sample_ext4(&info.rootfs);
    let tree = tmp.path().join("tree");
    store.unpack_to("imported:1", &tree).expect("unpack");
    common::check_sample_tree(&tree);
    // Importing again is idempotent.
    let again = store.import_docker_archive(&archive).expect("reimport");
    assert_eq!(again.digest, info.digest);
    common::assert_blobs_verify(store.root());
}

#[test]
fn imports_oci_layout() {
    let (tmp, store) = common::store();
    let layout = tmp.path().join("layout");
    let image = sample_image();
    image.write_oci_layout(&layout, "1.0");
    let info = store
        .import_oci_layout(&layout, Some("layout-img:1.0"))
        .expect("import OCI layout");
    assert_eq!(info.digest, image.digest().to_string());
    assert_eq!(info.reference, "docker.io/library/layout-img:1.0");
    assert_eq!(info.config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
    common::check_sample_ext4(&info.rootfs);
    let tree = tmp.path().join("tree");
    store.unpack_to(&info.digest, &tree).expect("unpack");
    common::check_sample_tree(&tree);

    // Without a reference it is named by digest.
    let (_tmp2, store2) = common::store();
    let unnamed = store2
        .import_oci_layout(&layout, None)
        .expect("import unnamed");
    assert_eq!(unnamed.reference, image.digest().to_string());
}

#[test]
fn corrupt_layout_blob_is_refused() {
    let (tmp, store) = common::store();
    let layout = tmp.path().join("layout");
    let image = sample_image();
    image.write_oci_layout(&layout, "1.0");
    let victim = layout
        .join("blobs/sha256")
        .join(Digest::of_bytes(&image.layers[1].blob).hex());
    std::fs::write(&victim, b"tampered").expect("tamper");
    let err = store.import_oci_layout(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(store.list().expect("list").is_empty());
    assert!(common::dir_is_empty(&store.root().join("tmp")));
}

#[test]
fn not_a_layout_is_refused() {
    let (tmp, store) = common::store();
    let err = store.import_oci_layout(tmp.path(), None).unwrap_err();
    assert!(err.to_string().contains("no oci-layout file"), "{err}");
}

/// Imports a one-layer image whose layer is `tar` and returns the error.
fn import_hostile(tar: Vec<u8>) -> (tempfile::TempDir, ImageError) {
    let (tmp, store) = common::store();
    let layout = tmp.path().join("layout");
    let base = LayerBuilder::new().file("etc/ok", b"ok", 0o644).tar();
    TestImage::new(vec![TestLayer::plain(base), TestLayer::gzip(tar)], "amd64")
        .write_oci_layout(&layout, "x");
    let err = store
        .import_oci_layout(&layout, Some("hostile:1"))
        .unwrap_err();
    assert!(
        store.get("hostile:1").expect("get").is_none(),
        "a failed import left an image"
    );
    assert!(
        common::dir_is_empty(&store.root().join("tmp")),
        "a failed import left temporary files"
    );
    assert!(common::dir_is_empty(&store.root().join("images")));
    (tmp, err)
}

fn layer_error(err: &ImageError) -> &LayerError {
    match err {
        ImageError::Layer {
            source: LayerBlobError::Layer(e),
            ..
        } => e,
        other => panic!("expected a layer error, got {other:?}"),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s += &format!(": {e}");
        cur = e.source();
    }
    s
}

#[test]
fn hostile_layers_write_nothing_outside() {
    let outside = tempfile::tempdir().expect("temp dir");
    let target = outside.path().join("escape");
    let target_str = target.to_str().expect("utf-8 path");
    assert!(
        target_str.len() < 100,
        "temp path too long for a plain tar name"
    );

    // `../escape` (deep enough to reach any temp dir) and `a/../../escape`.
    let dotdot = "../".repeat(30) + &target_str[1..];
    for name in [dotdot.as_str(), "a/../../escape"] {
        let name = if name.len() < 100 {
            name.to_owned()
        } else {
            "../../../../../../escape".to_owned()
        };
        let tar = LayerBuilder::new()
            .raw(tar::EntryType::Regular, name.as_bytes(), b"", b"pwned")
            .tar();
        let (_t, err) = import_hostile(tar);
        assert!(matches!(layer_error(&err), LayerError::Path(_)), "{err:?}");
        let text = chain(&err);
        assert!(
            text.contains("outside the image root") && text.contains(".."),
            "{text}"
        );
    }

    // An absolute member path.
    let tar = LayerBuilder::new()
        .raw(
            tar::EntryType::Regular,
            target_str.as_bytes(),
            b"",
            b"pwned",
        )
        .tar();
    let (_t, err) = import_hostile(tar);
    assert!(matches!(layer_error(&err), LayerError::Path(_)), "{err:?}");
    assert!(chain(&err).contains("is absolute"), "{}", chain(&err));

    // A symlink to the outside, then a write through it.
    let tar = LayerBuilder::new()
        .symlink("x", outside.path().to_str().expect("utf-8"))
        .raw(tar::EntryType::Regular, b"x/escape", b"", b"pwned")
        .tar();
    let (_t, err) = import_hostile(tar);
    assert!(
        matches!(layer_error(&err), LayerError::ThroughSymlink { .. }),
        "{err:?}"
    );
    assert!(
        chain(&err).contains("may not write through a symlink"),
        "{}",
        chain(&err)
    );

    // `x -> /` in one member and a directory below it in another.
    let tar = LayerBuilder::new()
        .symlink("root", "/")
        .raw(
            tar::EntryType::Directory,
            format!("root{}", outside.path().display()).as_bytes(),
            b"",
            b"",
        )
        .tar();
    let (_t, err) = import_hostile(tar);
    assert!(
        matches!(layer_error(&err), LayerError::ThroughSymlink { .. }),
        "{err:?}"
    );

    // A hard link to a file outside.
    std::fs::write(outside.path().join("secret"), b"secret").expect("write");
    let link = format!("{}/secret", outside.path().display());
    let tar = LayerBuilder::new()
        .raw(tar::EntryType::Link, b"stolen", link.as_bytes(), b"")
        .tar();
    let (_t, err) = import_hostile(tar);
    assert!(matches!(layer_error(&err), LayerError::Path(_)), "{err:?}");

    let mut left: Vec<String> = std::fs::read_dir(outside.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["secret"], "something was written outside the root");
    assert!(!Path::new("/escape").exists());
}
