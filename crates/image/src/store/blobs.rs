//! Blobs: manifests, configs and layers under `blobs/sha256/<hex>`,
//! verified against their digest on the way in and on the way out.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::ImageStore;
use crate::digest::{Digest, HashingWriter};
use crate::error::{io_err, ImageError};
use crate::manifest::{self, ImageManifest, Manifest};

impl ImageStore {
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

    pub(super) fn read_image_manifest(&self, digest: &Digest) -> Result<ImageManifest, ImageError> {
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
}
