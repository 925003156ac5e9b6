//! Volume locks: a VM that uses a volume holds an advisory lock on it for
//! its whole life, so a second writer and `nook volume rm` are refused with
//! the holder's name instead of corrupting or deleting data in use.
//!
//! The lock is a `flock` on a lock file next to the disk (`.NAME.lock` in
//! the disk's directory), which holds a small JSON record of the holder
//! ([`LockHolder`]). The kernel releases a `flock` when its holder dies, so
//! a crashed or killed nook never leaves a stale lock; the record is only
//! read to name the holder in a refusal. A writer takes the lock
//! exclusively, a read-only user shared: readers may share a volume, but
//! never with a writer (QEMU refuses that too, and a reader would see a
//! file system changing under it).
//!
//! When the disk's directory is not writable (an image file in a read-only
//! place), the disk file itself is locked, and a refusal cannot name the
//! holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

/// Who holds a volume lock: written into the lock file by its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// What holds it, in words: `nook run`, `session dev`, ...
    pub holder: String,
    pub pid: u32,
    /// The holder attached the volume read-only.
    pub read_only: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.holder, self.pid)
    }
}

/// A volume could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("volume {volume} is in use by {}: wait for it to end, or use another volume", holder_name(.holder))]
    InUse {
        /// The volume's name, or its disk's path.
        volume: String,
        /// Who holds it, when the record could be read.
        holder: Option<LockHolder>,
    },
    #[error("cannot lock volume {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_name(holder: &Option<LockHolder>) -> String {
    match holder {
        Some(h) if h.read_only => format!("{h}, read-only"),
        Some(h) => h.to_string(),
        None => "another process".to_string(),
    }
}

/// A held volume lock; released when dropped (or when its process dies).
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

/// The lock file of `disk`: `.FILE.lock` next to it.
pub fn lock_path(disk: &Path) -> PathBuf {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    disk.with_file_name(format!(".{name}.lock"))
}

/// How a volume is named in messages: a named volume (`DIR/NAME.ext4` in
/// the volume store) by its name, any other disk by its path.
pub(crate) fn volume_label(disk: &Path) -> String {
    let in_store = disk
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "volumes");
    match disk.file_stem() {
        Some(stem) if in_store && disk.extension().is_some_and(|e| e == "ext4") => {
            stem.to_string_lossy().into_owned()
        }
        _ => disk.display().to_string(),
    }
}

impl VolumeLock {
    /// Locks `disk` for `holder`: exclusively for a writer, shared for a
    /// reader. Never waits: a lock held elsewhere is [`LockError::InUse`].
    pub fn acquire(disk: &Path, holder: &str, read_only: bool) -> Result<VolumeLock, LockError> {
        let path = lock_path(disk);
        let io = |source| LockError::Io {
            path: disk.to_path_buf(),
            source,
        };
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let (mut file, recorded) = match opened {
            Ok(f) => (f, true),
            // A directory we cannot write: lock the disk itself.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                (File::open(disk).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        };
        let op = if read_only {
            FlockOperation::NonBlockingLockShared
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(LockError::InUse {
                    volume: volume_label(disk),
                    holder: recorded.then(|| read_holder(&mut file)).flatten(),
                })
            }
            Err(e) => return Err(io(e.into())),
        }
        if recorded {
            let record = LockHolder {
                holder: holder.to_string(),
                pid: std::process::id(),
                read_only,
            };
            let json = serde_json::to_vec(&record).unwrap_or_default();
            // The record only names the holder in refusals: failing to
            // write it costs a vaguer message, not the lock.
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(&json));
        }
        Ok(VolumeLock { _file: file })
    }

    /// Checks that nothing holds `disk`'s lock, and holds it exclusively
    /// while `f` runs (`nook volume rm`).
    pub fn with_exclusive<T>(
        disk: &Path,
        holder: &str,
        f: impl FnOnce() -> T,
    ) -> Result<T, LockError> {
        let lock = VolumeLock::acquire(disk, holder, false)?;
        let out = f();
        drop(lock);
        Ok(out)
    }
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(4096).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path) -> PathBuf {
        let d = dir.join("volumes");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("data.ext4");
        std::fs::write(&p, b"").unwrap();
        p
    }

    #[test]
    fn a_writer_excludes_everyone_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(dir.path());
        let held = VolumeLock::acquire(&disk, "nook run", false).unwrap();
        for read_only in [false, true] {
            let e = VolumeLock::acquire(&disk, "session s1", read_only).unwrap_err();
            let msg = e.to_string();
            let pid = std::process::id();
            assert!(
                msg.starts_with(&format!("volume data is in use by nook run (pid {pid})")),
                "{msg}"
            );
        }
        drop(held);
        VolumeLock::acquire(&disk, "session s1", false).unwrap();
    }

    #[test]
    fn readers_share_but_exclude_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk(dir.path());
        let a = VolumeLock::acquire(&disk, "session a", true).unwrap();
        let b = VolumeLock::acquire(&disk, "session b", true).unwrap();
        let e = VolumeLock::acquire(&disk, "nook run", false).unwrap_err();
        assert!(e.to_string().contains(", read-only:"), "{e}");
        drop((a, b));
        assert!(VolumeLock::with_exclusive(&disk, "nook volume rm", || ()).is_ok());
    }

    #[test]
    fn a_disk_outside_the_store_is_named_by_its_path() {
        assert_eq!(volume_label(Path::new("/home/v/volumes/x.ext4")), "x");
        assert_eq!(volume_label(Path::new("/srv/disk.img")), "/srv/disk.img");
        assert_eq!(
            lock_path(Path::new("/srv/disk.img")),
            Path::new("/srv/.disk.img.lock")
        );
    }
}
