//! The content-addressed image store.
//!
//! ```text
//! <root>/
//!   layout                 "nook-image-store-v1"
//!   store.lock             flock: shared by every writer, exclusive for remove/gc
//!   refs.json              {"docker.io/library/alpine:3.20": "sha256:…", …}
//!   refs.lock              flock around read-modify-write of refs.json
//!   blobs/sha256/<hex>     manifests, configs and layers, verified on write
//!   images/<hex>/          one per image, <hex> = manifest digest; complete iff present
//!     image.json           config, layers, sizes
//!     rootfs.ext4          the read-only root file system
//!   debian/<key>.json      Debian build cache: recipe key -> manifest digest
//!   locks/<hex>.lock       per-image build locks
//!   tmp/                   work in progress; anything here is garbage after a crash
//! ```
//!
//! Every file that readers trust is written to `tmp/` (or, for single
//! files, beside it by [`nook_fsutil::write_atomic`]) and renamed into
//! place, so an interrupted pull or build leaves nothing that looks complete.
//!
//! Modules: `blobs` (content-addressed blobs), `refs` (names, lookup,
//! removal), `images` (image records, unpacking, rootfs builds), `gc`.

mod blobs;
mod gc;
mod images;
mod refs;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, ImageError};
use crate::lock::FileLock;
use crate::manifest;

const LAYOUT: &str = "nook-image-store-v1";

/// Run-time defaults of an image, from its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Entrypoint argv (may be empty).
    pub entrypoint: Vec<String>,
    /// Default command argv (may be empty).
    pub cmd: Vec<String>,
    /// Working directory, if set.
    pub working_dir: Option<String>,
    /// User (name, uid or `uid:gid`), if set.
    pub user: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    fn from_config_file(cfg: &manifest::ConfigFile) -> ImageConfig {
        let rc = cfg.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: rc.env.unwrap_or_default(),
            entrypoint: rc.entrypoint.unwrap_or_default(),
            cmd: rc.cmd.unwrap_or_default(),
            working_dir: non_empty(rc.working_dir),
            user: non_empty(rc.user),
            labels: rc.labels.unwrap_or_default(),
        }
    }
}

/// An image in the store, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The name it was found by (or its first name, or its digest).
    pub reference: String,
    /// Every name that points at it.
    pub references: Vec<String>,
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// The read-only ext4 root file system: attach as a read-only disk.
    pub rootfs: PathBuf,
    /// Run-time defaults.
    pub config: ImageConfig,
    /// Size of the rootfs file in bytes.
    pub size: u64,
    /// Size of the image's blobs (manifest, config, layers) in bytes.
    pub content_size: u64,
    /// Layer digests, base first.
    pub layers: Vec<String>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image directories (rootfs + metadata) removed.
    pub images_removed: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Leftover temporary entries removed.
    pub temp_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// What `images/<hex>/image.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub(crate) digest: String,
    pub(crate) config: ImageConfig,
    pub(crate) config_digest: String,
    pub(crate) layers: Vec<String>,
    pub(crate) rootfs_size: u64,
    pub(crate) content_size: u64,
    pub(crate) files: u64,
    pub(crate) built_at: u64,
}

/// A content-addressed store of images and their root file systems.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!("{}-{n}-{nanos:x}", std::process::id()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ImageError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ImageError::Json {
            op: "parse",
            path: path.to_owned(),
            source,
        })
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec_pretty(value).map_err(|source| ImageError::Json {
        op: "serialize",
        path: path.to_owned(),
        source,
    })
}

/// Removes a file or a whole tree; missing is fine. Returns bytes freed.
pub(crate) fn remove_path(path: &Path) -> Result<u64, ImageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if meta.is_dir() {
        let size = tree_size(path);
        fs::remove_dir_all(path).map_err(io_err("remove", path))?;
        Ok(size)
    } else {
        fs::remove_file(path).map_err(io_err("remove", path))?;
        Ok(meta.len())
    }
}

/// Apparent size of a tree (best effort, for reports).
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// A digest given in full (`sha256:<hex>`, `<hex>`) or as a prefix of at
/// least 12 hex digits (optionally after `sha256:`).
fn digest_prefix(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    let ok = (12..=64).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(hex)
}

/// The name under which a pulled reference is recorded:
/// `registry/repository:tag`, or `registry/repository@digest` without a tag.
pub(crate) fn canonical_name(reference: &oci_client::Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (Some(tag), _) => format!("{}/{}:{tag}", reference.registry(), reference.repository()),
        (None, Some(d)) => format!("{}/{}@{d}", reference.registry(), reference.repository()),
        (None, None) => format!("{}/{}:latest", reference.registry(), reference.repository()),
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "images", "debian", "locks", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err("create store directory", &path))?;
        }
        let store = ImageStore {
            root: root.to_owned(),
        };
        let layout = root.join("layout");
        match fs::read_to_string(&layout) {
            Ok(found) if found.trim() == LAYOUT => {}
            Ok(found) => {
                return Err(ImageError::StoreLayout {
                    path: root.to_owned(),
                    found: found.trim().to_owned(),
                    expected: LAYOUT,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                nook_fsutil::write_atomic(&layout, 0o644, |f| {
                    f.write_all(format!("{LAYOUT}\n").as_bytes())
                })?;
            }
            Err(e) => return Err(io_err("read", &layout)(e)),
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unique path under `tmp/`.
    pub(crate) fn temp_path(&self) -> PathBuf {
        unique_name(&self.tmp_dir())
    }

    /// Held by every writer; remove and gc take it exclusively.
    pub(crate) fn shared_lock(&self) -> Result<FileLock, ImageError> {
        FileLock::shared(&self.root.join("store.lock"))
    }

    fn exclusive_lock(&self) -> Result<FileLock, ImageError> {
        FileLock::exclusive(&self.root.join("store.lock"))
    }

    pub(crate) fn named_lock(&self, name: &str) -> Result<FileLock, ImageError> {
        FileLock::exclusive(&self.root.join("locks").join(format!("{name}.lock")))
    }
}
