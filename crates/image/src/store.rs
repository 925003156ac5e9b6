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
//! Every file that readers trust is written to `tmp/` and renamed into
//! place, so an interrupted pull or build leaves nothing that looks complete.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::error::{io_err, ImageError};
use crate::layer::{self, LayerStats};
use crate::lock::FileLock;
use crate::manifest::{self, ImageManifest, LayerCompression, Manifest};
use crate::rootfs;

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

/// Writes `bytes` to `path` atomically (temp file in `tmp`, fsync, rename).
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = unique_name(tmp_dir);
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

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
                write_atomic(&store.tmp_dir(), &layout, format!("{LAYOUT}\n").as_bytes())?;
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

    // ---- blobs -------------------------------------------------------

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Streams `reader` into the store, checking it against `expected`
    /// (digest and size) when given. Returns the blob's digest and size.
    pub(crate) fn put_blob(
        &self,
        reader: &mut dyn Read,
        what: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), ImageError> {
        let tmp = self.temp_path();
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(256 << 10, file));
        let copied = io::copy(reader, &mut writer);
        let (buf, digest, size) = writer.finish();
        let flushed = buf.into_inner().map_err(|e| e.into_error());
        if let Err(e) = copied.and(flushed.map(drop)) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("copy into the store", what.to_owned())(e));
        }
        self.adopt_blob(&tmp, digest, size, what, expected)
    }

    pub(crate) fn put_blob_bytes(
        &self,
        bytes: &[u8],
        what: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<Digest, ImageError> {
        self.put_blob(&mut &bytes[..], what, expected)
            .map(|(d, _)| d)
    }

    /// Hashes a file already under `tmp/` and renames it into the blobs.
    pub(crate) fn adopt_blob_file(
        &self,
        tmp: &Path,
        what: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), ImageError> {
        let file = File::open(tmp).map_err(io_err("open", tmp))?;
        let (digest, size) = crate::digest::HashingReader::new(io::BufReader::new(file))
            .drain_and_finish()
            .map_err(io_err("read", tmp))?;
        self.adopt_blob(tmp, digest, size, what, expected)
    }

    fn adopt_blob(
        &self,
        tmp: &Path,
        digest: Digest,
        size: u64,
        what: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some((want, want_size)) = expected {
            let err = if *want != digest {
                Some(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: want.clone(),
                    actual: digest.clone(),
                })
            } else if want_size != size {
                Some(ImageError::SizeMismatch {
                    what: what.to_owned(),
                    expected: want_size,
                    actual: size,
                })
            } else {
                None
            };
            if let Some(err) = err {
                let _ = fs::remove_file(tmp);
                return Err(err);
            }
        }
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            let _ = fs::remove_file(tmp);
        } else {
            fs::rename(tmp, &dest).map_err(io_err("rename into place", &dest))?;
        }
        Ok((digest, size))
    }

    pub(crate) fn read_blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(io_err("open blob", &path))?;
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read blob", &path))?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn read_image_manifest(&self, digest: &Digest) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(digest, manifest::MAX_MANIFEST_BYTES)?;
        let what = || format!("manifest {digest}");
        match manifest::parse_manifest(&bytes) {
            Ok(Manifest::Image(m)) => Ok(m),
            Ok(Manifest::Index(_)) => Err(ImageError::Manifest {
                what: what(),
                source: manifest::ManifestError::UnknownKind,
            }),
            Err(source) => Err(ImageError::Manifest {
                what: what(),
                source,
            }),
        }
    }

    // ---- refs --------------------------------------------------------

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub(crate) fn read_refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        Ok(read_json(&self.refs_path())?.unwrap_or_default())
    }

    fn update_refs(&self, f: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), ImageError> {
        let _lock = FileLock::exclusive(&self.root.join("refs.lock"))?;
        let mut refs = self.read_refs()?;
        f(&mut refs);
        let path = self.refs_path();
        write_atomic(&self.tmp_dir(), &path, &to_json(&refs, &path)?)
    }

    /// Points `name` at the image `digest`.
    pub(crate) fn tag(&self, name: &str, digest: &Digest) -> Result<(), ImageError> {
        let value = digest.to_string();
        if self.read_refs()?.get(name) == Some(&value) {
            return Ok(());
        }
        self.update_refs(|refs| {
            refs.insert(name.to_owned(), value);
        })
    }

    // ---- images ------------------------------------------------------

    fn image_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("images").join(digest.hex())
    }

    /// The image's metadata, if the image is complete (metadata and rootfs
    /// both present).
    pub(crate) fn read_record(&self, digest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        let dir = self.image_dir(digest);
        if !dir.join("rootfs.ext4").is_file() {
            return Ok(None);
        }
        read_json(&dir.join("image.json"))
    }

    fn info(
        &self,
        record: ImageRecord,
        reference: Option<&str>,
        refs: &BTreeMap<String, String>,
    ) -> ImageInfo {
        let references: Vec<String> = refs
            .iter()
            .filter(|(_, d)| **d == record.digest)
            .map(|(name, _)| name.clone())
            .collect();
        let reference = reference
            .map(str::to_owned)
            .or_else(|| references.first().cloned())
            .unwrap_or_else(|| record.digest.clone());
        let rootfs = self
            .root
            .join("images")
            .join(record.digest.trim_start_matches("sha256:"))
            .join("rootfs.ext4");
        ImageInfo {
            reference,
            references,
            digest: record.digest,
            rootfs,
            config: record.config,
            size: record.rootfs_size,
            content_size: record.content_size,
            layers: record.layers,
        }
    }

    /// The image `digest` with its refs, which must exist.
    pub(crate) fn info_for(
        &self,
        digest: &Digest,
        reference: &str,
    ) -> Result<ImageInfo, ImageError> {
        let record = self
            .read_record(digest)?
            .ok_or_else(|| ImageError::NotFound(digest.to_string()))?;
        Ok(self.info(record, Some(reference), &self.read_refs()?))
    }

    fn all_image_digests(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Resolves a reference to an image digest without touching the network.
    fn resolve(
        &self,
        reference: &str,
        refs: &BTreeMap<String, String>,
    ) -> Result<Option<Digest>, ImageError> {
        if let Some(d) = refs.get(reference) {
            return Ok(Digest::parse(d).ok());
        }
        if let Some(prefix) = digest_prefix(reference) {
            let matches: Vec<Digest> = self
                .all_image_digests()?
                .into_iter()
                .filter(|d| d.hex().starts_with(prefix))
                .collect();
            return match matches.len() {
                0 => Ok(None),
                1 => Ok(matches.into_iter().next()),
                _ => Err(ImageError::Ambiguous(reference.to_owned())),
            };
        }
        let Ok(parsed) = oci_client::Reference::try_from(reference) else {
            return Ok(None);
        };
        if let Some(d) = parsed.digest().and_then(|d| Digest::parse(d).ok()) {
            return Ok(Some(d));
        }
        Ok(refs
            .get(&canonical_name(&parsed))
            .and_then(|d| Digest::parse(d).ok()))
    }

    /// Looks an image up by name (`alpine`, `alpine:3.20`,
    /// `127.0.0.1:5000/test:1`, a Debian build's name), by `NAME@sha256:…`,
    /// or by digest or unique digest prefix (12+ hex digits). Never touches
    /// the network. Exact names are tried before normalised ones.
    pub fn get(&self, reference: &str) -> Result<Option<ImageInfo>, ImageError> {
        let refs = self.read_refs()?;
        let Some(digest) = self.resolve(reference, &refs)? else {
            return Ok(None);
        };
        Ok(self
            .read_record(&digest)?
            .map(|record| self.info(record, Some(reference), &refs)))
    }

    /// Every complete image in the store, sorted by first name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let refs = self.read_refs()?;
        let mut out = Vec::new();
        for digest in self.all_image_digests()? {
            if let Some(record) = self.read_record(&digest)? {
                out.push(self.info(record, None, &refs));
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Removes a name. Removing the last name of an image, or removing an
    /// image by digest, deletes its rootfs too; blobs go at the next gc.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.exclusive_lock()?;
        let refs = self.read_refs()?;
        let digest = self
            .resolve(reference, &refs)?
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?;
        let value = digest.to_string();
        let name_key = if refs.contains_key(reference) {
            Some(reference.to_owned())
        } else {
            oci_client::Reference::try_from(reference)
                .ok()
                .filter(|r| r.digest().is_none())
                .map(|r| canonical_name(&r))
                .filter(|k| refs.contains_key(k))
        };
        let mut remaining = 0;
        self.update_refs(|refs| {
            match &name_key {
                Some(key) => {
                    refs.remove(key);
                }
                None => refs.retain(|_, d| *d != value),
            }
            remaining = refs.values().filter(|d| **d == value).count();
        })?;
        if remaining == 0 {
            remove_path(&self.image_dir(&digest))?;
        }
        Ok(())
    }

    /// Removes images no name points at, names of missing images, blobs no
    /// image uses, stale Debian cache entries and leftovers of interrupted
    /// work. Waits for running pulls and builds to finish first.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        let _lock = self.exclusive_lock()?;
        let mut report = GcReport::default();
        let present: BTreeSet<Digest> = self.all_image_digests()?.into_iter().collect();
        self.update_refs(|refs| {
            refs.retain(|_, d| Digest::parse(d).is_ok_and(|d| present.contains(&d)));
        })?;
        let named: BTreeSet<String> = self.read_refs()?.into_values().collect();
        let mut keep_blobs = BTreeSet::new();
        for digest in &present {
            let dir = self.image_dir(digest);
            let record = self.read_record(digest)?;
            let Some(record) = record.filter(|r| named.contains(&r.digest)) else {
                report.bytes_freed += remove_path(&dir)?;
                report.images_removed += 1;
                continue;
            };
            keep_blobs.insert(digest.hex().to_owned());
            keep_blobs.insert(
                record
                    .config_digest
                    .trim_start_matches("sha256:")
                    .to_owned(),
            );
            for l in &record.layers {
                keep_blobs.insert(l.trim_start_matches("sha256:").to_owned());
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("read directory", &blobs))? {
            let entry = entry.map_err(io_err("read directory", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                report.bytes_freed += remove_path(&entry.path())?;
                report.blobs_removed += 1;
            }
        }
        for (dir, count) in [("tmp", true), ("locks", false)] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
                let entry = entry.map_err(io_err("read directory", &dir))?;
                let freed = remove_path(&entry.path())?;
                if count {
                    report.bytes_freed += freed;
                    report.temp_removed += 1;
                }
            }
        }
        crate::debian::gc_cache(self, &named)?;
        Ok(report)
    }

    /// Applies the layers of image `reference` onto `dest` (created if
    /// missing; should be empty): the unpacked tree the rootfs is built from.
    pub fn unpack_to(&self, reference: &str, dest: &Path) -> Result<LayerStats, ImageError> {
        let info = self
            .get(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?;
        let digest =
            Digest::parse(&info.digest).map_err(|_| ImageError::NotFound(info.digest.clone()))?;
        let manifest = self.read_image_manifest(&digest)?;
        fs::create_dir_all(dest).map_err(io_err("create", dest))?;
        self.apply_layers(&digest, &manifest, dest)
    }

    fn apply_layers(
        &self,
        image: &Digest,
        m: &ImageManifest,
        dest: &Path,
    ) -> Result<LayerStats, ImageError> {
        let config_digest = m.config.digest().map_err(|source| ImageError::Manifest {
            what: format!("manifest {image}"),
            source,
        })?;
        let config_bytes = self.read_blob(&config_digest, manifest::MAX_CONFIG_BYTES)?;
        let config = manifest::parse_config(&config_bytes, m.layers.len()).map_err(|source| {
            ImageError::Manifest {
                what: format!("config {config_digest}"),
                source,
            }
        })?;
        let diff_ids: Vec<Digest> = config
            .rootfs
            .map(|r| {
                r.diff_ids
                    .iter()
                    .filter_map(|d| Digest::parse(d).ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut total = LayerStats::default();
        for (i, desc) in m.layers.iter().enumerate() {
            let bad = |source| ImageError::Manifest {
                what: format!("manifest {image}"),
                source,
            };
            let digest = desc.digest().map_err(bad)?;
            let compression = LayerCompression::from_media_type(&desc.media_type).map_err(bad)?;
            let stats = layer::apply_layer_blob(
                dest,
                &self.blob_path(&digest),
                compression,
                &digest,
                diff_ids.get(i),
            )
            .map_err(|source| ImageError::Layer {
                image: image.clone(),
                layer: digest.clone(),
                source,
            })?;
            total.add(&stats);
        }
        Ok(total)
    }

    /// Builds the rootfs of the image whose manifest (and every blob it
    /// names) is already in the store, unless it exists. The caller holds
    /// the shared store lock.
    pub(crate) fn commit_image(&self, digest: &Digest) -> Result<ImageRecord, ImageError> {
        if let Some(r) = self.read_record(digest)? {
            return Ok(r);
        }
        let _lock = self.named_lock(digest.hex())?;
        if let Some(r) = self.read_record(digest)? {
            return Ok(r);
        }
        let m = self.read_image_manifest(digest)?;
        let work = self.temp_path();
        let result = self.build_image_dir(digest, &m, &work);
        let _ = remove_path(&work);
        result
    }

    fn build_image_dir(
        &self,
        digest: &Digest,
        m: &ImageManifest,
        work: &Path,
    ) -> Result<ImageRecord, ImageError> {
        let started = std::time::Instant::now();
        let root = work.join("root");
        let out = work.join("image");
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        fs::create_dir_all(&out).map_err(io_err("create", &out))?;
        let stats = self.apply_layers(digest, m, &root)?;
        let unpacked = started.elapsed();
        let rootfs_size = rootfs::build_ext4(&root, &out.join("rootfs.ext4"), "nook-root")?;
        remove_path(&root)?;
        let config_digest = m.config.digest().map_err(|source| ImageError::Manifest {
            what: format!("manifest {digest}"),
            source,
        })?;
        let config_bytes = self.read_blob(&config_digest, manifest::MAX_CONFIG_BYTES)?;
        let config = manifest::parse_config(&config_bytes, m.layers.len()).map_err(|source| {
            ImageError::Manifest {
                what: format!("config {config_digest}"),
                source,
            }
        })?;
        let manifest_size = fs::metadata(self.blob_path(digest)).map_or(0, |m| m.len());
        let content_size = manifest_size
            + m.config.size().unwrap_or(0)
            + m.layers.iter().map(|l| l.size().unwrap_or(0)).sum::<u64>();
        let record = ImageRecord {
            digest: digest.to_string(),
            config: ImageConfig::from_config_file(&config),
            config_digest: config_digest.to_string(),
            layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
            rootfs_size,
            content_size,
            files: stats.files,
            built_at: now_secs(),
        };
        let json_path = out.join("image.json");
        write_atomic(&self.tmp_dir(), &json_path, &to_json(&record, &json_path)?)?;
        let dest = self.image_dir(digest);
        // An incomplete directory (rootfs deleted by hand) is replaced.
        remove_path(&dest)?;
        fs::rename(&out, &dest).map_err(io_err("rename into place", &dest))?;
        tracing::info!(
            image = %digest,
            files = stats.files,
            rootfs_size,
            unpack_ms = unpacked.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "image: rootfs built"
        );
        Ok(record)
    }
}
