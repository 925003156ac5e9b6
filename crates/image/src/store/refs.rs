//! Names: `refs.json` maps names to image digests; lookup by name, digest
//! or digest prefix; removal of names (and of images with no name left).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::{
    canonical_name, digest_prefix, read_json, remove_path, to_json, ImageInfo, ImageStore,
};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::lock::FileLock;

impl ImageStore {
    pub(super) fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub(crate) fn read_refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        Ok(read_json(&self.refs_path())?.unwrap_or_default())
    }

    pub(super) fn update_refs(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<(), ImageError> {
        let _lock = FileLock::exclusive(&self.root.join("refs.lock"))?;
        let mut refs = self.read_refs()?;
        f(&mut refs);
        let path = self.refs_path();
        let bytes = to_json(&refs, &path)?;
        nook_fsutil::write_atomic(&path, 0o644, |f| f.write_all(&bytes))?;
        Ok(())
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

    /// Resolves a reference to an image digest without touching the network.
    pub(super) fn resolve(
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
}
