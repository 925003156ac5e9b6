//! Removing cache files nothing refers to any more: initramfs images of
//! forgotten requests (the index keeps the last 32) and kernel entries that
//! neither a pin nor an index entry names (superseded by `refresh`).
//!
//! Runs under the cache lock at the end of the slow path. Files younger than
//! [`GRACE`] are kept, so a process that was handed their paths a moment ago
//! can still open them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Layout;
use crate::debian::DebPin;
use crate::index::Index;

/// Unreferenced files at least this old are removed.
pub(crate) const GRACE: Duration = Duration::from_secs(15 * 60);

/// Removes unreferenced initramfs images and kernel entries older than
/// `grace`. Failures are logged, never returned: collection is best effort.
pub(crate) fn collect(layout: &Layout, index: &Index, grace: Duration) {
    let mut keep: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in &index.entries {
        keep.insert(entry.assets.initramfs.clone());
        if let Some(dir) = entry.assets.kernel.parent() {
            keep.insert(dir.to_owned());
        }
    }
    let pins = layout.kernels().join("pins");
    for pin in list(&pins) {
        if let Some(pin) = DebPin::load(&pin) {
            keep.insert(layout.kernels().join(&pin.sha256));
        }
    }
    let now = SystemTime::now();
    let old = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= grace)
    };
    for path in list(&layout.initramfs()) {
        // Images, and temporaries of a build a killed process left.
        let is_image = path.extension().is_some_and(|e| e == "cpio")
            || path.file_name().is_some_and(nook_fsutil::is_temp_name);
        if is_image && !keep.contains(&path) && old(&path) {
            remove(&path, std::fs::remove_file(&path));
        }
    }
    for path in list(&layout.kernels()) {
        let is_entry = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_entry && !keep.contains(&path) && old(&path) {
            remove(&path, std::fs::remove_dir_all(&path));
        }
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn remove(path: &Path, result: std::io::Result<()>) {
    match result {
        Ok(()) => {
            tracing::debug!(target: "nook::assets", path = %path.display(), "removed unreferenced cache file")
        }
        Err(e) => {
            tracing::warn!(target: "nook::assets", path = %path.display(), error = %e, "cannot remove unreferenced cache file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Assets, PrepareWork};
    use crate::index::IndexEntry;

    #[test]
    fn removes_only_old_unreferenced_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let images = layout.initramfs();
        std::fs::create_dir_all(&images).unwrap();
        let kept_image = images.join("a.cpio");
        let stale_image = images.join("b.cpio");
        let other_file = images.join("notes.txt");
        for f in [&kept_image, &stale_image, &other_file] {
            std::fs::write(f, b"x").unwrap();
        }
        let (e1, e2, e3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        for e in [&e1, &e2, &e3] {
            std::fs::create_dir_all(layout.kernels().join(e)).unwrap();
        }
        let pin = DebPin {
            requested: "p".into(),
            package: "linux-image-1".into(),
            version: "1".into(),
            sha256: e2.clone(),
            size: 0,
            installed_size: 0,
        };
        pin.save(&layout.pin("p")).unwrap();
        let mut index = Index::default();
        index.upsert(IndexEntry {
            key: "k".into(),
            assets: Assets {
                kernel: layout.kernels().join(&e1).join("vmlinuz"),
                kernel_config: None,
                initramfs: kept_image.clone(),
                kernel_release: "1".into(),
                modules: vec![],
                work: PrepareWork::default(),
            },
            stamps: vec![],
        });

        // Everything is fresh: nothing goes.
        collect(&layout, &index, GRACE);
        assert!(stale_image.exists());
        assert!(layout.kernels().join(&e3).exists());

        collect(&layout, &index, Duration::ZERO);
        assert!(kept_image.exists(), "named by the index");
        assert!(!stale_image.exists());
        assert!(other_file.exists(), "not ours");
        assert!(layout.kernels().join(&e1).exists(), "named by the index");
        assert!(layout.kernels().join(&e2).exists(), "named by a pin");
        assert!(!layout.kernels().join(&e3).exists());
        assert!(layout.pin("p").exists());
    }
}
