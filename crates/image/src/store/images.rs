//! Images: `images/<hex>/` holds an image's record (`image.json`) and its
//! read-only root file system, built from the layers in the blobs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    now_secs, read_json, remove_path, to_json, ImageConfig, ImageInfo, ImageRecord, ImageStore,
};
use crate::digest::Digest;
use crate::error::{io_err, ImageError};
use crate::layer::{self, LayerStats};
use crate::manifest::{self, ImageManifest, LayerCompression};
use crate::rootfs;

impl ImageStore {
    pub(super) fn image_dir(&self, digest: &Digest) -> PathBuf {
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

    pub(super) fn info(
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

    pub(super) fn all_image_digests(&self) -> Result<Vec<Digest>, ImageError> {
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

    /// The digest and parsed config of image `image` (manifest `m`).
    fn read_config(
        &self,
        image: &Digest,
        m: &ImageManifest,
    ) -> Result<(Digest, manifest::ConfigFile), ImageError> {
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
        Ok((config_digest, config))
    }

    pub(super) fn apply_layers(
        &self,
        image: &Digest,
        m: &ImageManifest,
        dest: &Path,
    ) -> Result<LayerStats, ImageError> {
        let (_, config) = self.read_config(image, m)?;
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
        let (config_digest, config) = self.read_config(digest, m)?;
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
        let bytes = to_json(&record, &json_path)?;
        nook_fsutil::write_atomic(&json_path, 0o644, |f| f.write_all(&bytes))?;
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
