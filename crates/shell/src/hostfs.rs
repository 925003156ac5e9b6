//! The workspace on the host (sync mode, host backend): every path is
//! opened with `openat2(RESOLVE_IN_ROOT)` under the workspace directory, so
//! a symlink the guest planted (`ln -s /etc x`) resolves inside the
//! workspace too and no builtin reaches a host file outside it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timestamps};

use crate::workspace::{Entry, EntryKind, WorkspaceFs, WsPath};

/// The workspace directory on the host.
#[derive(Debug)]
pub struct HostFs {
    root: OwnedFd,
    path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn kind_of(t: FileType) -> EntryKind {
    match t {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

impl HostFs {
    /// The workspace at `path` (an existing directory).
    pub fn open(path: &Path) -> io::Result<HostFs> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(HostFs {
            root,
            path: path.to_path_buf(),
        })
    }

    /// The workspace directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `p` is on the host (for display and for the host backend's
    /// working directory; file access goes through [`HostFs::open_in`]).
    pub fn host_path(&self, p: &WsPath) -> PathBuf {
        let mut out = self.path.clone();
        for c in p.components() {
            out.push(c);
        }
        out
    }

    fn open_in(&self, p: &WsPath, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let rel = p.relative();
        Ok(rustix::fs::openat2(
            &self.root,
            rel.as_str(),
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            RESOLVE,
        )?)
    }

    /// `p`'s parent directory (opened) and its last component.
    fn parent_of(&self, p: &WsPath) -> io::Result<(OwnedFd, String)> {
        let (Some(parent), Some(name)) = (p.parent(), p.name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not on the workspace root itself",
            ));
        };
        let dir = self.open_in(&parent, OFlags::DIRECTORY | OFlags::RDONLY, 0)?;
        Ok((dir, name.to_string()))
    }
}

/// Removes everything inside directory `dir`.
fn clear_dir(dir: &OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (name, t) in names {
        let is_dir = match t {
            FileType::Unknown => {
                rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)?
            }
            t => t == FileType::Directory,
        };
        if is_dir {
            let sub = rustix::fs::openat(
                dir,
                name.as_c_str(),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(&sub)?;
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty())?;
        }
    }
    Ok(())
}

impl WorkspaceFs for HostFs {
    fn read(&mut self, p: &WsPath) -> io::Result<Vec<u8>> {
        let mut f = File::from(self.open_in(p, OFlags::RDONLY, 0)?);
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn write(&mut self, p: &WsPath, data: &[u8], append: bool) -> io::Result<()> {
        let extra = if append {
            OFlags::APPEND
        } else {
            OFlags::TRUNC
        };
        let fd = self.open_in(p, OFlags::WRONLY | OFlags::CREATE | extra, 0o644)?;
        File::from(fd).write_all(data)
    }

    fn kind(&mut self, p: &WsPath) -> io::Result<Option<EntryKind>> {
        match self.open_in(p, OFlags::PATH, 0) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                Ok(Some(kind_of(FileType::from_raw_mode(st.st_mode))))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&mut self, p: &WsPath) -> io::Result<Vec<Entry>> {
        let dir = self.open_in(p, OFlags::DIRECTORY | OFlags::RDONLY, 0)?;
        let mut out = Vec::new();
        for entry in Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let st = rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
            out.push(Entry {
                name,
                kind: kind_of(FileType::from_raw_mode(st.st_mode)),
                size: st.st_size as u64,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn mkdir(&mut self, p: &WsPath, parents: bool) -> io::Result<()> {
        if parents {
            let mut at = WsPath::root();
            for c in p.components() {
                at = at.child(c);
                match self.kind(&at)? {
                    Some(EntryKind::Dir) => {}
                    Some(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} is not a directory", at.display()),
                        ))
                    }
                    None => self.mkdir(&at, false)?,
                }
            }
            return Ok(());
        }
        let (dir, name) = self.parent_of(p)?;
        Ok(rustix::fs::mkdirat(
            &dir,
            name.as_str(),
            Mode::from_raw_mode(0o755),
        )?)
    }

    fn remove(&mut self, p: &WsPath, recursive: bool) -> io::Result<()> {
        let (dir, name) = self.parent_of(p)?;
        let st = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Ok(rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())?);
        }
        if !recursive {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory (use rm -r)",
            ));
        }
        let sub = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        clear_dir(&sub)?;
        Ok(rustix::fs::unlinkat(
            &dir,
            name.as_str(),
            AtFlags::REMOVEDIR,
        )?)
    }

    fn rename(&mut self, from: &WsPath, to: &WsPath) -> io::Result<()> {
        let (fdir, fname) = self.parent_of(from)?;
        let (tdir, tname) = self.parent_of(to)?;
        Ok(rustix::fs::renameat(
            &fdir,
            fname.as_str(),
            &tdir,
            tname.as_str(),
        )?)
    }

    fn touch(&mut self, p: &WsPath) -> io::Result<()> {
        let fd = self.open_in(p, OFlags::WRONLY | OFlags::CREATE, 0o644)?;
        let now = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        Ok(rustix::fs::futimens(
            &fd,
            &Timestamps {
                last_access: now,
                last_modification: now,
            },
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(s: &str) -> WsPath {
        WsPath::root().resolve(s, "/workspace").unwrap()
    }

    #[test]
    fn file_operations_stay_in_the_workspace() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut fs = HostFs::open(dir.path()).unwrap();
        fs.mkdir(&ws("a/b"), true).unwrap();
        fs.write(&ws("a/b/f.txt"), b"one\n", false).unwrap();
        fs.write(&ws("a/b/f.txt"), b"two\n", true).unwrap();
        assert_eq!(fs.read(&ws("a/b/f.txt")).unwrap(), b"one\ntwo\n");
        assert_eq!(fs.kind(&ws("a")).unwrap(), Some(EntryKind::Dir));
        assert_eq!(fs.kind(&ws("nope")).unwrap(), None);
        fs.touch(&ws("a/t")).unwrap();
        let names: Vec<String> = fs
            .list(&ws("a"))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b", "t"]);
        fs.rename(&ws("a/t"), &ws("u")).unwrap();
        assert!(dir.path().join("u").is_file());
        assert!(fs.remove(&ws("a"), false).is_err());
        fs.remove(&ws("a"), true).unwrap();
        assert!(!dir.path().join("a").exists());

        // A symlink to the outside resolves inside the workspace.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(fs.read(&ws("link/secret")).is_err());
        fs.write(&ws("link/secret"), b"x", false).unwrap_err();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
        // Removing the link removes the link, not its target.
        fs.remove(&ws("link"), true).unwrap();
        assert!(outside.path().join("secret").exists());
    }
}
