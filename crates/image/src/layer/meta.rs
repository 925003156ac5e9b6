//! Member metadata: mode, owner, times and extended attributes, read from
//! the tar header (and its PAX extensions) and applied without following
//! symlinks.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::BorrowedFd;

use nook_fsutil::IoError;
use rustix::fs::{AtFlags, Mode, XattrFlags};

use super::error::{io_err, LayerError};
use super::fsops::timestamps;
use super::path::MemberPath;
use super::unpack::Unpacker;

const XATTR_PREFIX: &str = "SCHILY.xattr.";

pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Unpacker {
    pub(super) fn read_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &MemberPath,
    ) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |e: io::Error| IoError::new("read the header of", path.to_string(), e);
        let mut meta = Meta {
            mode: header.mode().map_err(bad)? & 0o7777,
            uid: header.uid().map_err(bad)?,
            gid: header.gid().map_err(bad)?,
            mtime: header.mtime().map_err(bad)?,
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(LayerError::Tar)? {
            for ext in exts {
                let ext = ext.map_err(LayerError::Tar)?;
                let Ok(key) = ext.key() else { continue };
                let number = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()?
                        .parse::<u64>()
                        .ok()
                };
                if let Some(attr) = key.strip_prefix(XATTR_PREFIX) {
                    meta.xattrs.push((attr.into(), ext.value_bytes().to_vec()));
                } else if key == "uid" {
                    meta.uid = number().unwrap_or(meta.uid);
                } else if key == "gid" {
                    meta.gid = number().unwrap_or(meta.gid);
                }
            }
        }
        Ok(meta)
    }

    pub(super) fn owner(&self, meta: &Meta) -> Option<(rustix::fs::Uid, rustix::fs::Gid)> {
        let uid = u32::try_from(meta.uid).ok().filter(|&u| u != u32::MAX)?;
        let gid = u32::try_from(meta.gid).ok().filter(|&g| g != u32::MAX)?;
        self.chown.then(|| {
            (
                rustix::fs::Uid::from_raw(uid),
                rustix::fs::Gid::from_raw(gid),
            )
        })
    }

    /// Owner, mode and xattrs through an open descriptor (files, dirs).
    pub(super) fn set_fd_meta(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        path: &MemberPath,
    ) -> Result<(), LayerError> {
        if let Some((uid, gid)) = self.owner(meta) {
            rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(io_err("set owner of", path))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(io_err("set mode of", path))?;
        for (key, value) in &meta.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(fd, key.as_os_str(), value, XattrFlags::empty()) {
                tracing::debug!(member = %path, xattr = ?key, error = %e, "image: cannot set xattr");
            }
        }
        Ok(())
    }

    /// Owner, times and (for non-symlinks) mode by name, never following.
    pub(super) fn set_at_meta(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
        path: &MemberPath,
    ) -> Result<(), LayerError> {
        if let Some((uid, gid)) = self.owner(meta) {
            rustix::fs::chownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("set owner of", path))?;
        }
        if chmod {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io_err("set mode of", path))?;
        }
        rustix::fs::utimensat(
            parent,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err("set times of", path))
    }
}
