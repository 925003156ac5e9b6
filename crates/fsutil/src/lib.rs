//! File helpers every nook crate shares: one atomic write
//! ([`write_atomic`]) and one shape for a failed operation on a path
//! ([`IoError`]: `cannot {op} {path}`, the cause as its source). Each
//! crate's error enum carries it as `Io(#[from] IoError)`.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An operation on a file or directory failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    /// What was being done, as a verb phrase (`"read"`, `"create directory"`).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The `io::ErrorKind` of the cause.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// A closure for `map_err`: `fs::read(&p).map_err(io_err("read", &p))?`.
pub fn io_err(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> IoError {
    let path = path.as_ref().to_path_buf();
    move |source| IoError { op, path, source }
}

/// Marker in the names of [`write_atomic`]'s temporary files.
const TEMP_MARKER: &str = ".tmp-";

/// Whether `name` is a temporary file [`write_atomic`] made (left behind
/// only when the process died mid-write): cleaners may remove it.
pub fn is_temp_name(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARKER))
}

/// Creates or replaces `path` so that readers see the old file or the
/// whole new one, never a part: `fill` writes a temporary file beside it
/// (`.NAME.tmp-PID-N`, created with permissions `mode`), which is synced,
/// renamed over `path`, and the directory synced. On failure the temporary
/// file is removed and `path` is untouched. The directory must exist.
pub fn write_atomic<T>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<T>,
) -> Result<T, IoError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        IoError::new(
            "write",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        "{TEMP_MARKER}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let result = fill(&mut file)
        .map_err(io_err("write", &tmp))
        .and_then(|v| {
            // The umask may have narrowed `mode`: say what was asked for.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .and_then(|()| file.sync_all())
                .map_err(io_err("sync", &tmp))?;
            std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
            Ok(v)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the directory is synced.
    sync_dir(dir)?;
    result
}

/// Syncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write_atomic(&path, 0o644, |f| f.write_all(b"old")).unwrap();
        let n = write_atomic(&path, 0o600, |f| f.write_all(b"new").map(|()| 3)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(names(dir.path()), ["file"]);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, b"old").unwrap();
        let e = write_atomic(&path, 0o600, |f| {
            f.write_all_at(b"partial", 0)?;
            Err::<(), _>(io::Error::from_raw_os_error(28))
        })
        .unwrap_err();
        assert_eq!(e.op, "write");
        assert_eq!(e.source.raw_os_error(), Some(28));
        assert!(
            is_temp_name(e.path.file_name().unwrap()),
            "{}",
            e.path.display()
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "target untouched");
        assert_eq!(names(dir.path()), ["snap"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/file");
        let e = write_atomic(&path, 0o644, |f| f.write_all(b"x")).unwrap_err();
        assert_eq!(e.op, "create");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("cannot create "), "{e}");
    }

    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_name(OsStr::new(".refs.json.tmp-12-0")));
        assert!(!is_temp_name(OsStr::new("refs.json")));
        assert!(!is_temp_name(OsStr::new(".hidden")));
    }
}
