//! Test fixtures: a layer tar builder that can also write the hostile
//! member names a real tar tool refuses to produce.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Builds a layer tar in memory.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBuilder").finish_non_exhaustive()
    }
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn append_named(&mut self, mut h: tar::Header, name: &str, data: &[u8]) -> &mut Self {
        // `append_data` writes long names as GNU long-name members.
        self.tar
            .append_data(&mut h, name, data)
            .expect("append to an in-memory tar");
        self
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append_named(header(tar::EntryType::Directory, mode, 0), path, &[])
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, content: &[u8], mode: u32) -> &mut Self {
        let h = header(tar::EntryType::Regular, mode, content.len() as u64);
        self.append_named(h, path, content)
    }

    /// A regular file with an owner.
    pub fn file_owned(&mut self, path: &str, content: &[u8], uid: u64, gid: u64) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append_named(h, path, content)
    }

    /// A symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append to an in-memory tar");
        self
    }

    /// A hard link to an earlier member.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append to an in-memory tar");
        self
    }

    /// A whiteout for `dir/name`.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, &[], 0o644)
    }

    /// An opaque marker for `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// A member of `kind` whose name is written verbatim (up to 100 bytes),
    /// bypassing the tar crate's checks: for `../x` and `/abs` members.
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        let mut h = header(kind, 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.tar
            .append(&h, data)
            .expect("append to an in-memory tar");
        self
    }

    /// The finished uncompressed tar.
    pub fn tar(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("finish an in-memory tar")
    }

    /// The finished tar, gzip-compressed.
    pub fn tar_gz(&mut self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

/// Gzip-compresses bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}
