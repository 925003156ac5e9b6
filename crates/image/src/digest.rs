//! Content digests (`sha256:<64 hex>`) and readers/writers that hash what
//! passes through them.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Only sha256 is supported.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// The hex part is not 64 lower-case hex digits.
    #[error("malformed sha256 digest {0:?}: expected sha256:<64 lower-case hex digits>")]
    Malformed(String),
}

/// A sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_owned()));
        };
        if algo != "sha256" {
            return Err(DigestError::Algorithm(s.to_owned()));
        }
        Digest::from_hex(hex).ok_or_else(|| DigestError::Malformed(s.to_owned()))
    }

    /// Builds a digest from its 64 hex digits, if well formed.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 hex digits, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the input, then returns its digest and length.
    pub(crate) fn drain_and_finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.finish())
    }

    pub(crate) fn finish(self) -> (Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (Digest { hex }, self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts every byte written through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (self.inner, Digest { hex }, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()), Ok(d));
    }

    #[test]
    fn refuses_bad_digests() {
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::Algorithm(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:XYZ"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Digest::parse("nocolon"),
            Err(DigestError::Malformed(_))
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(Digest::parse(&upper).is_err());
    }

    #[test]
    fn hashing_reader_matches_of_bytes() {
        let data = b"hello world".to_vec();
        let r = HashingReader::new(&data[..]);
        let (d, n) = r.drain_and_finish().unwrap();
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of_bytes(&data));
    }
}
