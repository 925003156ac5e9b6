//! Store behaviour without a registry: names, removal, gc, and what an
//! interrupted pull or build leaves behind.

mod common;

use common::{sample_image, TestImage, TestLayer};
use nook_image::testing::LayerBuilder;
use nook_image::{Digest, ImageError, ImageStore};

fn import_sample(store: &ImageStore, tmp: &tempfile::TempDir, name: &str) -> nook_image::ImageInfo {
    let layout = tmp
        .path()
        .join(format!("layout-{}", name.replace([':', '/'], "_")));
    sample_image().write_oci_layout(&layout, "x");
    store
        .import_oci_layout(&layout, Some(name))
        .expect("import")
}

#[test]
fn names_removal_and_gc() {
    let (tmp, store) = common::store();
    let a = import_sample(&store, &tmp, "one:1");
    let b = import_sample(&store, &tmp, "two:1");
    assert_eq!(a.digest, b.digest);
    let info = store.get("one:1").expect("get").expect("present");
    assert_eq!(
        info.references,
        ["docker.io/library/one:1", "docker.io/library/two:1"]
    );

    // Removing one of two names keeps the image.
    store.remove("one:1").expect("remove");
    assert!(store.get("one:1").expect("get").is_none());
    assert!(store.get("two:1").expect("get").is_some());
    assert!(a.rootfs.is_file());
    assert_eq!(store.gc().expect("gc").blobs_removed, 0);

    // Removing by digest removes every name and the rootfs.
    store.remove(&a.digest).expect("remove by digest");
    assert!(store.get("two:1").expect("get").is_none());
    assert!(!a.rootfs.exists());
    let report = store.gc().expect("gc");
    assert_eq!(report.blobs_removed, 5, "{report:?}");
    assert!(report.bytes_freed > 0);
    assert!(matches!(
        store.remove("two:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn interrupted_work_never_looks_complete_and_gc_cleans_it() {
    let (tmp, store) = common::store();
    // A layout missing its last layer: the import fails after storing
    // the first blobs, as a pull cut off mid-way would.
    let layout = tmp.path().join("layout");
    let image = TestImage::new(
        vec![
            TestLayer::gzip(LayerBuilder::new().file("a", b"a", 0o644).tar()),
            TestLayer::gzip(LayerBuilder::new().file("b", b"b", 0o644).tar()),
        ],
        "amd64",
    );
    image.write_oci_layout(&layout, "x");
    std::fs::remove_file(
        layout
            .join("blobs/sha256")
            .join(Digest::of_bytes(&image.layers[1].blob).hex()),
    )
    .expect("remove blob");
    let err = store.import_oci_layout(&layout, Some("cut:1")).unwrap_err();
    assert!(matches!(err, ImageError::Io(_)), "{err:?}");
    assert!(store.get("cut:1").expect("get").is_none());
    assert!(store
        .get(&image.digest().to_string())
        .expect("get")
        .is_none());
    assert!(store.list().expect("list").is_empty());

    // Debris of a crash: a half-written temp file, the temporary of an
    // atomic write of refs.json, and an image directory without its
    // metadata.
    std::fs::write(store.root().join("tmp/123-0-abc"), b"partial").expect("write");
    std::fs::write(store.root().join(".refs.json.tmp-123-0"), b"{").expect("write");
    let half = store.root().join("images").join(image.digest().hex());
    std::fs::create_dir_all(&half).expect("mkdir");
    std::fs::write(half.join("rootfs.ext4"), b"partial").expect("write");
    assert!(store
        .get(&image.digest().to_string())
        .expect("get")
        .is_none());
    assert!(store.list().expect("list").is_empty());

    let report = store.gc().expect("gc");
    assert_eq!(report.temp_removed, 2, "{report:?}");
    assert!(!store.root().join(".refs.json.tmp-123-0").exists());
    assert_eq!(report.images_removed, 1, "{report:?}");
    assert!(report.blobs_removed >= 1, "{report:?}");
    assert!(common::dir_is_empty(&store.root().join("blobs/sha256")));
    assert!(common::dir_is_empty(&store.root().join("images")));
    assert!(common::dir_is_empty(&store.root().join("tmp")));
}

#[test]
fn corrupt_stored_blob_is_detected_on_rebuild() {
    let (tmp, store) = common::store();
    let info = import_sample(&store, &tmp, "c:1");
    // Tamper with a stored layer, drop the rootfs, and ask for it again.
    let layer = Digest::parse(&info.layers[0]).expect("digest");
    std::fs::write(store.blob_path(&layer), b"tampered").expect("tamper");
    let err = store
        .unpack_to("c:1", &tmp.path().join("tree"))
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("Digest") || text.contains("Tar"), "{text}");
}

#[test]
fn deleted_rootfs_is_rebuilt_on_import() {
    let (tmp, store) = common::store();
    let info = import_sample(&store, &tmp, "r:1");
    std::fs::remove_file(&info.rootfs).expect("delete rootfs");
    assert!(
        store.get("r:1").expect("get").is_none(),
        "an image without its rootfs looks complete"
    );
    let again = import_sample(&store, &tmp, "r:1");
    assert_eq!(again.digest, info.digest);
    common::check_sample_ext4(&again.rootfs);
}

#[test]
fn layout_version_is_checked() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("images");
    ImageStore::open(&root).expect("open");
    std::fs::write(root.join("layout"), "nook-image-store-v999\n").expect("write");
    let err = ImageStore::open(&root).unwrap_err();
    assert!(matches!(err, ImageError::StoreLayout { .. }), "{err:?}");
}
