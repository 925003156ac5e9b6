//! The fast-path index: `assets-index.json` maps a cheap key of the request
//! (kernel source, module list, agent and busybox paths) to the prepared
//! [`Assets`] plus a stamp (size, mtime, ctime, inode) of every file that
//! result depends on: inputs (agent, busybox, a local kernel and its
//! modules, the Debian pin) and outputs (kernel, initramfs).
//!
//! A lookup hashes nothing and reads nothing but this small file and a few
//! `stat`s, so a warm `prepare` costs well under a millisecond. Any stamp
//! that differs (file rebuilt, truncated, replaced, deleted) sends the caller
//! down the slow path, which re-verifies by content hash.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Assets, AssetsConfig};
use crate::error::{cache_err, AssetsError};

/// Bump when the meaning of cached files changes (initramfs layout, ...).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// At most this many requests are remembered (most recent first).
const MAX_ENTRIES: usize = 32;

/// Cheap identity of a file: changes whenever its contents plausibly did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
}

impl FileStamp {
    /// Stamps `path` now (following symlinks, as opening it would).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }

    /// Whether the file still looks exactly as when stamped.
    pub fn is_current(&self) -> bool {
        Self::of(&self.path).is_ok_and(|now| now == *self)
    }
}

/// One remembered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub key: String,
    pub assets: Assets,
    pub stamps: Vec<FileStamp>,
}

/// The whole index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Index {
    pub format: u32,
    pub entries: Vec<IndexEntry>,
}

/// The key of a request: everything in the config that selects a result,
/// but no file contents. File identity is checked through the stamps.
pub(crate) fn request_key(cfg: &AssetsConfig) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        format: u32,
        kernel: &'a crate::config::KernelSource,
        modules: &'a [String],
        agent: &'a Path,
        busybox: &'a Path,
    }
    // Relative paths mean different files from different directories.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (agent, busybox) = (abs(&cfg.agent), abs(&cfg.busybox));
    let key = Key {
        format: FORMAT_VERSION,
        kernel: &cfg.kernel,
        modules: &cfg.modules,
        agent: &agent,
        busybox: &busybox,
    };
    // Serializing plain strings and paths cannot fail; fall back to Debug
    // formatting rather than panic if a path is not UTF-8.
    let bytes = serde_json::to_vec(&key).unwrap_or_else(|_| format!("{cfg:?}").into_bytes());
    hex::encode(Sha256::digest(bytes))
}

impl Index {
    /// Reads the index; a missing or unreadable one is empty (the slow path
    /// rebuilds it), never an error.
    pub fn load(path: &Path) -> Self {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        match serde_json::from_slice::<Self>(&bytes) {
            Ok(index) if index.format == FORMAT_VERSION => index,
            Ok(_) => Self::default(),
            Err(e) => {
                tracing::debug!(target: "nook::assets", path = %path.display(), error = %e, "ignoring unreadable index");
                Self::default()
            }
        }
    }

    /// The assets for `key` if every file they depend on is unchanged.
    pub fn lookup(&self, key: &str) -> Option<&IndexEntry> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .filter(|e| e.stamps.iter().all(FileStamp::is_current))
    }

    /// Remembers `entry`, replacing any with the same key.
    pub fn upsert(&mut self, entry: IndexEntry) {
        self.format = FORMAT_VERSION;
        self.entries.retain(|e| e.key != entry.key);
        self.entries.insert(0, entry);
        self.entries.truncate(MAX_ENTRIES);
    }

    /// Writes the index atomically (readers never see a partial file).
    pub fn save(&self, path: &Path) -> Result<(), AssetsError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| cache_err("encode index", path)(e.into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(cache_err("create directory", dir))?;
        }
        nook_fsutil::write_atomic(path, 0o644, |f| std::io::Write::write_all(f, &json))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KernelSource, PrepareWork};

    fn entry(key: &str, stamps: Vec<FileStamp>) -> IndexEntry {
        IndexEntry {
            key: key.to_owned(),
            assets: Assets {
                kernel: "/k".into(),
                kernel_config: None,
                initramfs: "/i".into(),
                kernel_release: "6.1".into(),
                modules: vec!["virtio".into()],
                work: PrepareWork::default(),
            },
            stamps,
        }
    }

    #[test]
    fn lookup_hits_only_while_every_stamped_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent");
        std::fs::write(&file, b"v1").unwrap();
        let mut index = Index::default();
        index.upsert(entry("k", vec![FileStamp::of(&file).unwrap()]));
        let path = dir.path().join("index.json");
        index.save(&path).unwrap();
        let loaded = Index::load(&path);
        assert_eq!(loaded, index);
        assert!(loaded.lookup("k").is_some());
        assert!(loaded.lookup("other").is_none());

        // Same size, new contents: mtime/ctime change.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&file, b"v2").unwrap();
        assert!(loaded.lookup("k").is_none(), "rewritten file");

        // Truncation and deletion.
        index.upsert(entry("k", vec![FileStamp::of(&file).unwrap()]));
        assert!(index.lookup("k").is_some());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(1)
            .unwrap();
        assert!(index.lookup("k").is_none(), "truncated file");
        std::fs::remove_file(&file).unwrap();
        assert!(index.lookup("k").is_none(), "deleted file");
    }

    #[test]
    fn upsert_replaces_and_caps() {
        let mut index = Index::default();
        for i in 0..40 {
            index.upsert(entry(&format!("k{i}"), vec![]));
        }
        index.upsert(entry("k39", vec![]));
        assert_eq!(index.entries.len(), MAX_ENTRIES);
        assert_eq!(index.entries[0].key, "k39");
        assert_eq!(index.entries.iter().filter(|e| e.key == "k39").count(), 1);
    }

    #[test]
    fn corrupt_or_missing_index_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        assert_eq!(Index::load(&path), Index::default());
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(Index::load(&path), Index::default());
    }

    #[test]
    fn request_key_depends_on_every_selecting_field() {
        let base = AssetsConfig {
            home: "/h".into(),
            kernel: KernelSource::default(),
            modules: vec!["virtio_mmio".into()],
            agent: "/a".into(),
            busybox: "/bin/busybox".into(),
            progress: false,
        };
        let k = request_key(&base);
        assert_eq!(k, request_key(&base.clone()));
        let mut c = base.clone();
        c.progress = true;
        assert_eq!(k, request_key(&c), "progress does not select a result");
        c.modules.push("vsock".into());
        assert_ne!(k, request_key(&c));
        let mut c = base.clone();
        c.agent = "/b".into();
        assert_ne!(k, request_key(&c));
        let mut c = base.clone();
        c.kernel = KernelSource::Local {
            kernel: "/k".into(),
            modules_dir: None,
        };
        assert_ne!(k, request_key(&c));
    }
}
