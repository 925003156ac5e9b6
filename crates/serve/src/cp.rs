//! Guest files from a client process: [`SessionClient`]'s file operations
//! and `nook cp`'s tree copies in and out of a session.
//!
//! Guest paths are resolved in the guest: a `..` in one never leaves the
//! guest. Names that come back from the guest (directory listings) are
//! checked before they become host paths: a name with a `/`, or `.`/`..`,
//! is refused, so a copy out stays inside its host destination.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nook::{FileKind, FileStat};

use crate::client::{next_reply, SessionClient};
use crate::error::SessionError;
use crate::wire::{decode_bytes, encode_bytes, to_line, FileInput, SessionReply, SessionRequest};

/// Bytes per `chunk` line a client sends.
const CHUNK: usize = 64 * 1024;

/// How a read through a session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRead {
    pub size: u64,
    pub copied: u64,
    pub truncated: bool,
}

fn unexpected(what: &str, got: SessionReply) -> SessionError {
    SessionError::Protocol(format!("expected {what}, got {got:?}"))
}

impl SessionClient {
    /// Replaces guest file `path` with what `src` yields (atomic in the guest).
    pub fn write_from(
        &self,
        path: &str,
        mode: u32,
        src: &mut dyn Read,
    ) -> Result<(), SessionError> {
        let (mut w, mut r) = self.request(&SessionRequest::FileWrite {
            path: path.to_string(),
            mode,
        })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| SessionError::io("read", Path::new(path), e))?;
            let line = if n == 0 {
                to_line(&FileInput::End)
            } else {
                to_line(&FileInput::Chunk {
                    data: encode_bytes(&buf[..n]),
                })
            };
            // A refused write replies early and closes: its error is below.
            if w.write_all(&line).is_err() || n == 0 {
                break;
            }
        }
        match next_reply(&mut r)? {
            Some(SessionReply::Ok) => Ok(()),
            Some(SessionReply::Error { code, message }) => {
                Err(SessionError::Refused { code, message })
            }
            other => Err(unexpected("ok", other.unwrap_or(SessionReply::Ok))),
        }
    }

    /// Copies guest file `path` into `dst`, at most `max` bytes when given.
    pub fn read_to(
        &self,
        path: &str,
        dst: &mut dyn Write,
        max: Option<u64>,
    ) -> Result<RemoteRead, SessionError> {
        let (_w, mut r) = self.request(&SessionRequest::FileRead {
            path: path.to_string(),
            max_bytes: max,
        })?;
        loop {
            match next_reply(&mut r)? {
                Some(SessionReply::Data { data }) => {
                    let bytes =
                        decode_bytes(&data).map_err(|e| SessionError::Protocol(e.to_string()))?;
                    dst.write_all(&bytes)
                        .map_err(|e| SessionError::io("write", Path::new(path), e))?;
                }
                Some(SessionReply::ReadDone {
                    size,
                    copied,
                    truncated,
                }) => {
                    return Ok(RemoteRead {
                        size,
                        copied,
                        truncated,
                    })
                }
                Some(SessionReply::Error { code, message }) => {
                    return Err(SessionError::Refused { code, message })
                }
                Some(other) => return Err(unexpected("data", other)),
                None => return Err(SessionError::Protocol("the read ended early".into())),
            }
        }
    }

    /// What guest `path` is (a final symlink not followed).
    pub fn stat(&self, path: &str) -> Result<FileStat, SessionError> {
        match self.call(&SessionRequest::FileStat {
            path: path.to_string(),
        })? {
            SessionReply::Stat(s) => Ok(s),
            other => Err(unexpected("stat", other)),
        }
    }

    /// Guest directory `path`'s entries and whether the listing was cut.
    pub fn list(&self, path: &str) -> Result<(Vec<FileStat>, bool), SessionError> {
        match self.call(&SessionRequest::FileList {
            path: path.to_string(),
        })? {
            SessionReply::List { entries, truncated } => Ok((entries, truncated)),
            other => Err(unexpected("list", other)),
        }
    }

    /// `mkdir -p` in the guest.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), SessionError> {
        self.call(&SessionRequest::FileMkdir {
            path: path.to_string(),
            mode,
        })
        .map(|_| ())
    }

    /// `rm` (`-r` with `recursive`) in the guest.
    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), SessionError> {
        self.call(&SessionRequest::FileRemove {
            path: path.to_string(),
            recursive,
        })
        .map(|_| ())
    }

    /// A guest symlink at `path` to `target`.
    pub fn symlink(&self, target: &str, path: &str) -> Result<(), SessionError> {
        self.call(&SessionRequest::FileSymlink {
            target: target.to_string(),
            path: path.to_string(),
        })
        .map(|_| ())
    }
}

/// `dir/name` for guest paths.
fn guest_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// A guest path's last component (`/` for the root).
fn guest_base(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("/")
}

/// Whether a name from a guest listing can be a host path component.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Copies host file or tree `src` to guest path `dst` (into it, when it is
/// an existing directory), keeping modes and symlinks. Returns bytes copied.
pub fn copy_in(c: &SessionClient, src: &Path, dst: &str) -> Result<u64, SessionError> {
    let target = match c.stat(dst) {
        Ok(st) if st.kind == FileKind::Dir => {
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.is_empty() {
                dst.to_string()
            } else {
                guest_join(dst, &name)
            }
        }
        _ => dst.to_string(),
    };
    copy_in_entry(c, src, &target)
}

/// Copies the host's `src` to exactly the guest's `dst` (into nothing
/// else, even when `dst` is an existing directory); returns the bytes copied.
pub(crate) fn copy_in_as(c: &SessionClient, src: &Path, dst: &str) -> Result<u64, SessionError> {
    copy_in_entry(c, src, dst)
}

fn copy_in_entry(c: &SessionClient, src: &Path, dst: &str) -> Result<u64, SessionError> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| SessionError::io("stat", src, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(|e| SessionError::io("read link", src, e))?;
        let _ = c.remove(dst, false);
        c.symlink(&target.to_string_lossy(), dst)?;
        return Ok(0);
    }
    if ft.is_dir() {
        c.mkdir_all(dst, mode)?;
        let mut total = 0;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| SessionError::io("list", src, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for name in entries {
            total += copy_in_entry(
                c,
                &src.join(&name),
                &guest_join(dst, &name.to_string_lossy()),
            )?;
        }
        return Ok(total);
    }
    let mut f = std::fs::File::open(src).map_err(|e| SessionError::io("open", src, e))?;
    c.write_from(dst, mode, &mut f)?;
    Ok(meta.len())
}

/// Copies guest file or tree `src` to host path `dst` (into it, when it is
/// an existing directory), keeping modes and symlinks. Returns bytes copied.
pub fn copy_out(c: &SessionClient, src: &str, dst: &Path) -> Result<u64, SessionError> {
    let st = c.stat(src)?;
    let target = if dst.is_dir() && guest_base(src) != "/" {
        dst.join(guest_base(src))
    } else {
        dst.to_path_buf()
    };
    copy_out_entry(c, src, &st, &target)
}

fn copy_out_entry(
    c: &SessionClient,
    src: &str,
    st: &FileStat,
    dst: &Path,
) -> Result<u64, SessionError> {
    // Never write through a symlink already at the destination.
    if std::fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(dst).map_err(|e| SessionError::io("replace", dst, e))?;
    }
    match st.kind {
        FileKind::Symlink => {
            let target = st.link_target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&target, dst)
                .map_err(|e| SessionError::io("create symlink", dst, e))?;
            Ok(0)
        }
        FileKind::Dir => {
            std::fs::create_dir_all(dst).map_err(|e| SessionError::io("create", dst, e))?;
            let (entries, truncated) = c.list(src)?;
            if truncated {
                return Err(SessionError::Protocol(format!(
                    "guest directory {src} has too many entries to copy"
                )));
            }
            let mut total = 0;
            for e in &entries {
                if !safe_name(&e.name) {
                    return Err(SessionError::Protocol(format!(
                        "guest directory {src} lists an unsafe name {:?}",
                        e.name
                    )));
                }
                total += copy_out_entry(c, &guest_join(src, &e.name), e, &dst.join(&e.name))?;
            }
            set_mode(dst, st.mode)?;
            Ok(total)
        }
        FileKind::File => {
            let mut f =
                std::fs::File::create(dst).map_err(|e| SessionError::io("create", dst, e))?;
            let read = c.read_to(src, &mut f, None)?;
            set_mode(dst, st.mode)?;
            Ok(read.copied)
        }
        FileKind::Other => Err(SessionError::Protocol(format!(
            "guest file {src} is neither a file, a directory nor a symlink"
        ))),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SessionError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| SessionError::io("chmod", path, e))
}

/// A `nook cp` operand: `NAME:/path` (guest side) or a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyPath {
    Guest { session: String, path: String },
    Host(PathBuf),
}

impl CopyPath {
    /// `NAME:PATH` when NAME is a valid session name and there is no `/`
    /// before the colon; a relative guest PATH is taken from `/`.
    pub fn parse(s: &str) -> CopyPath {
        if let Some((name, path)) = s.split_once(':') {
            if crate::state::validate_name(name).is_ok() {
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                return CopyPath::Guest {
                    session: name.to_string(),
                    path,
                };
            }
        }
        CopyPath::Host(PathBuf::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_parse() {
        assert_eq!(
            CopyPath::parse("s1:/tmp/x"),
            CopyPath::Guest {
                session: "s1".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            CopyPath::parse("s1:rel"),
            CopyPath::Guest {
                session: "s1".into(),
                path: "/rel".into()
            }
        );
        assert_eq!(CopyPath::parse("./a:b"), CopyPath::Host("./a:b".into()));
        assert_eq!(CopyPath::parse("/x/y"), CopyPath::Host("/x/y".into()));
    }

    #[test]
    fn guest_names_are_checked_before_they_become_host_paths() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(!safe_name(bad), "{bad}");
        }
        assert!(safe_name("..a") && safe_name("f.txt"));
        assert_eq!(guest_base("/a/b/"), "b");
        assert_eq!(guest_base("/"), "/");
        assert_eq!(guest_join("/", "x"), "/x");
    }
}
