//! Shared fixtures for the integration tests: a throwaway image store,
//! the sample image, and `debugfs` to look inside ext4 images. Test images
//! and the loopback `docker-registry` live in `nook_image::testing`.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::Command;

use nook_image::testing::LayerBuilder;
pub use nook_image::testing::{free_port, Registry, TestImage, TestLayer};
use nook_image::{Digest, ImageStore};

pub fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open store");
    (dir, store)
}

/// The image the registry and import tests share: three layers (gzip,
/// gzip, zstd) with a whiteout of a file and of a directory, an opaque
/// directory, an absolute symlink, a hard link and an owned file.
pub fn sample_image() -> TestImage {
    let l1 = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/marker", b"marker-v1\n", 0o644)
        .file("etc/removed", b"to be whited out\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .symlink("bin/sh", "/bin/tool")
        .hardlink("bin/tool-link", "bin/tool")
        .file("gone-dir/inner", b"x", 0o644)
        .file("opq/old1", b"old", 0o644)
        .file("opq/sub/old2", b"old", 0o644)
        .file_owned("home/user/owned", b"mine", 1000, 1000)
        .tar();
    let l2 = LayerBuilder::new()
        .file("etc/marker", b"marker-v2\n", 0o644)
        .whiteout("etc", "removed")
        .whiteout("", "gone-dir")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", b"new", 0o644)
        .tar();
    let l3 = LayerBuilder::new()
        .dir("work", 0o755)
        .file("usr/share/l3", b"from a zstd layer", 0o644)
        .tar();
    TestImage::new(
        vec![
            TestLayer::gzip(l1),
            TestLayer::gzip(l2),
            TestLayer::zstd(l3),
        ],
        "amd64",
    )
}

/// Checks the unpacked tree of [`sample_image`].
pub fn check_sample_tree(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::read(root.join("etc/marker")).expect("marker"),
        b"marker-v2\n"
    );
    assert!(
        !root.join("etc/removed").exists(),
        "whiteout did not remove etc/removed"
    );
    assert!(
        !root.join("etc/.wh.removed").exists(),
        "whiteout marker left behind"
    );
    assert!(
        !root.join("gone-dir").exists(),
        "whiteout did not remove gone-dir"
    );
    let mut opq: Vec<String> = std::fs::read_dir(root.join("opq"))
        .expect("opq")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"], "opaque directory kept lower content");
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("symlink"),
        Path::new("/bin/tool")
    );
    let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
    let link = std::fs::metadata(root.join("bin/tool-link")).expect("tool-link");
    assert_eq!(tool.ino(), link.ino(), "hard link not kept");
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(root.join("usr/share/l3")).expect("l3"),
        b"from a zstd layer"
    );
    if rustix::process::geteuid().is_root() {
        let owned = std::fs::metadata(root.join("home/user/owned")).expect("owned");
        assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    }
}

/// Runs `debugfs -R CMD IMG`; `None` when debugfs is not installed.
pub fn debugfs(img: &Path, cmd: &str) -> Option<(String, String)> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(img)
        .output()
        .ok()?;
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Checks the ext4 image of [`sample_image`] with debugfs.
pub fn check_sample_ext4(img: &Path) {
    let Some((marker, _)) = debugfs(img, "cat /etc/marker") else {
        eprintln!(
            "skipping the debugfs checks: debugfs is not installed (apt-get install e2fsprogs)"
        );
        return;
    };
    assert_eq!(marker, "marker-v2\n");
    let (_, err) = debugfs(img, "stat /etc/removed").expect("debugfs");
    assert!(err.contains("not found"), "whiteout-ed file in ext4: {err}");
    let (link, _) = debugfs(img, "stat /bin/sh").expect("debugfs");
    assert!(
        link.contains("Type: symlink") && link.contains("/bin/tool"),
        "{link}"
    );
    let (tool, _) = debugfs(img, "stat /bin/tool").expect("debugfs");
    assert!(tool.contains("Links: 2"), "hard link lost in ext4: {tool}");
    let (opq, _) = debugfs(img, "ls /opq").expect("debugfs");
    assert!(opq.contains("new") && !opq.contains("old1"), "{opq}");
    if rustix::process::geteuid().is_root() {
        let (owned, _) = debugfs(img, "stat /home/user/owned").expect("debugfs");
        assert!(
            owned.contains("User:  1000") && owned.contains("Group:  1000"),
            "{owned}"
        );
    }
}

/// Every blob file in the store hashes to its name.
pub fn assert_blobs_verify(store_root: &Path) {
    for entry in std::fs::read_dir(store_root.join("blobs/sha256")).expect("blobs") {
        let entry = entry.expect("entry");
        let bytes = std::fs::read(entry.path()).expect("read blob");
        assert_eq!(
            Digest::of_bytes(&bytes).hex(),
            entry.file_name().to_string_lossy(),
            "corrupt blob"
        );
    }
}

pub fn dir_is_empty(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

pub fn store_size(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        }
    }
    walk(root)
}
