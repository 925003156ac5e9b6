//! Layers: member path sanitizing, safe unpacking, whiteouts, compression.

mod error;
mod fsops;
mod meta;
mod path;
mod unpack;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

pub use error::LayerError;
pub use path::{MemberPath, PathError, MAX_NAME_BYTES, MAX_PATH_BYTES};
pub use unpack::apply_layer;

use crate::digest::{Digest, HashingReader};
use crate::manifest::LayerCompression;

/// Why a layer blob could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerBlobError {
    /// The blob file is unreadable.
    #[error("cannot read layer blob {0}")]
    Read(String, #[source] io::Error),
    /// The blob's bytes do not hash to its digest.
    #[error("layer blob hashes to {actual}, not {expected}: the stored blob is corrupt; run gc and pull or import the image again")]
    Digest {
        /// The blob's name.
        expected: Digest,
        /// What was read.
        actual: Digest,
    },
    /// Applying the unpacked tar failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// What a layer contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar members seen.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub specials: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

impl LayerStats {
    pub(crate) fn add(&mut self, o: &LayerStats) {
        self.entries += o.entries;
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.hardlinks += o.hardlinks;
        self.specials += o.specials;
        self.whiteouts += o.whiteouts;
        self.bytes += o.bytes;
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Applies a stored layer blob (plain, gzip or zstd; sniffed when the media
/// type does not say) onto `root`, verifying the blob against `digest` and
/// the uncompressed stream against `diff_id`.
pub fn apply_layer_blob(
    root: &Path,
    blob: &Path,
    compression: LayerCompression,
    digest: &Digest,
    diff_id: Option<&Digest>,
) -> Result<LayerStats, LayerBlobError> {
    let read_err = |e| LayerBlobError::Read(blob.display().to_string(), e);
    let file = File::open(blob).map_err(read_err)?;
    let mut hashing = HashingReader::new(file);
    let stats = {
        let mut buffered = BufReader::with_capacity(256 << 10, &mut hashing);
        let head = buffered.fill_buf().map_err(read_err)?;
        let kind = match compression {
            LayerCompression::Sniff if head.starts_with(GZIP_MAGIC) => LayerCompression::Gzip,
            LayerCompression::Sniff if head.starts_with(ZSTD_MAGIC) => LayerCompression::Zstd,
            LayerCompression::Sniff => LayerCompression::None,
            known => known,
        };
        let reader: Box<dyn Read + '_> = match kind {
            LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            LayerCompression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(read_err)?)
            }
            LayerCompression::None | LayerCompression::Sniff => Box::new(buffered),
        };
        apply_layer(root, reader, diff_id)?
    };
    let (actual, _) = hashing.drain_and_finish().map_err(read_err)?;
    if actual != *digest {
        return Err(LayerBlobError::Digest {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(stats)
}
