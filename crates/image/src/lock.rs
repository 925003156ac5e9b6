//! Advisory file locks (flock) that are released when dropped.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::FlockOperation;

use crate::error::{io_err, ImageError};

/// A held flock on a lock file.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until an exclusive lock on `path` is held.
    pub(crate) fn exclusive(path: &Path) -> Result<FileLock, ImageError> {
        Self::lock(path, FlockOperation::LockExclusive)
    }

    /// Blocks until a shared lock on `path` is held.
    pub(crate) fn shared(path: &Path) -> Result<FileLock, ImageError> {
        Self::lock(path, FlockOperation::LockShared)
    }

    fn lock(path: &Path, op: FlockOperation) -> Result<FileLock, ImageError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("open lock file", path))?;
        rustix::fs::flock(&file, op).map_err(|e| io_err("lock", path)(e.into()))?;
        Ok(FileLock { _file: file })
    }
}
