//! File helpers of snapshots: the hidden directory a snapshot is written
//! into and renamed from, size and checksum checks, and the sparse copy of
//! guest RAM.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::warn;

use super::{SnapshotMemory, MANIFEST_FILE, MEMORY_FILE, STATE_FILE};
use nook_fsutil::{io_err, sync_dir};

use crate::error::QemuSnapshotError;
use crate::sys;

/// Page size for the sparse copy's zero-page detection.
pub(super) const PAGE: usize = 4096;

/// A hidden sibling directory that becomes the snapshot by rename, and is
/// removed if that never happens.
#[derive(Debug)]
pub(super) struct PartialDir {
    path: PathBuf,
    committed: bool,
}

impl PartialDir {
    pub(super) fn create(dir: &Path) -> Result<PartialDir, QemuSnapshotError> {
        let name = dir.file_name().ok_or_else(|| {
            io_err("name a snapshot directory", dir)(io::ErrorKind::InvalidInput.into())
        })?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".partial-{}-{nanos}", std::process::id()));
        let path = dir.with_file_name(hidden);
        std::fs::create_dir(&path).map_err(io_err("create", &path))?;
        Ok(PartialDir {
            path,
            committed: false,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data files, writes the manifest (`manifest`, already
    /// encoded), and renames the directory to `dir`.
    pub(super) fn commit(
        mut self,
        dir: &Path,
        manifest: &[u8],
        memory: SnapshotMemory,
    ) -> Result<(), QemuSnapshotError> {
        let mut files = vec![STATE_FILE];
        if memory == SnapshotMemory::File {
            files.push(MEMORY_FILE);
        }
        for name in files {
            let path = self.path.join(name);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", &path))?;
        }
        let path = self.path.join(MANIFEST_FILE);
        std::fs::write(&path, manifest)
            .and_then(|()| File::open(&path)?.sync_all())
            .map_err(io_err("write", &path))?;
        sync_dir(&self.path)?;
        std::fs::rename(&self.path, dir).map_err(io_err("rename the finished snapshot to", dir))?;
        self.committed = true;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                warn!(target: "nook::qemu", path = %self.path.display(), error = %e,
                      "cannot remove an unfinished snapshot");
            }
        }
    }
}

/// Opens `path` and checks that it is `expected` bytes long.
pub(super) fn open_checked(path: &Path, expected: u64) -> Result<File, QemuSnapshotError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let actual = file.metadata().map_err(io_err("stat", path))?.len();
    if actual != expected {
        return Err(QemuSnapshotError::SizeMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(file)
}

/// Length and CRC-32 of a file.
pub(super) fn checksum(path: &Path) -> Result<(u64, u32), QemuSnapshotError> {
    let mut file = File::open(path).map_err(io_err("read", path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e).into()),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize()))
}

/// Copies `src` to the new file `dst` keeping it sparse: holes are skipped
/// (`SEEK_DATA`/`SEEK_HOLE`) and so are all-zero pages within data. Returns
/// the bytes written.
pub(super) fn copy_sparse(src: &Path, dst: &Path) -> io::Result<u64> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = File::options().write(true).create_new(true).open(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let Some(start) = sys::seek_data(&from, pos)? else {
            break;
        };
        let end = sys::seek_hole(&from, start)?.unwrap_or(len).min(len);
        let mut offset = start;
        while offset < end {
            let n = usize::try_from(end - offset).map_or(buf.len(), |left| left.min(buf.len()));
            let chunk = &mut buf[..n];
            from.read_exact_at(chunk, offset)?;
            for (run_start, run) in nonzero_runs(chunk) {
                to.write_all_at(run, offset + run_start as u64)?;
                written += run.len() as u64;
            }
            offset += n as u64;
        }
        pos = end.max(pos + 1);
    }
    to.set_len(len)?;
    Ok(written)
}

/// The maximal runs of pages of `buf` that are not all zero, with their
/// offsets.
pub(super) fn nonzero_runs(buf: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut run_start = None;
    static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
    for (i, page) in buf.chunks(PAGE).enumerate() {
        // A slice comparison is a memcmp, fast even in debug builds.
        let zero = page == &ZERO_PAGE[..page.len()];
        match (zero, run_start) {
            (false, None) => run_start = Some(i * PAGE),
            (true, Some(start)) => {
                runs.push((start, &buf[start..i * PAGE]));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        runs.push((start, &buf[start..]));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_drops_zero_pages_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ram");
        let file = File::create(&src).unwrap();
        let mib = 1u64 << 20;
        file.set_len(16 * mib).unwrap();
        file.write_all_at(&[7u8; 5000], 3 * mib + 100).unwrap();
        // A written but all-zero region: data to SEEK_DATA, skipped anyway.
        file.write_all_at(&vec![0u8; mib as usize], 8 * mib)
            .unwrap();
        file.write_all_at(b"end", 16 * mib - 3).unwrap();
        drop(file);
        let dst = dir.path().join("copy");
        let written = copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        // Two pages around the 5000 bytes at 3 MiB + 100 (which straddle
        // pages 768..=769), and the last page.
        assert_eq!(written, 3 * PAGE as u64);
        assert!(copy_sparse(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn nonzero_runs_merge_adjacent_pages() {
        let mut buf = vec![0u8; 5 * PAGE + 10];
        buf[PAGE] = 1;
        buf[2 * PAGE + 5] = 1;
        buf[5 * PAGE + 9] = 1;
        let runs: Vec<(usize, usize)> = nonzero_runs(&buf)
            .into_iter()
            .map(|(o, r)| (o, r.len()))
            .collect();
        assert_eq!(runs, [(PAGE, 2 * PAGE), (5 * PAGE, 10)]);
    }

    #[test]
    fn partial_dir_vanishes_unless_committed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snap");
        let partial = PartialDir::create(&dir).unwrap();
        let hidden = partial.path().to_owned();
        assert!(hidden
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".snap.partial-"));
        std::fs::write(hidden.join(STATE_FILE), b"half").unwrap();
        drop(partial);
        assert!(!hidden.exists() & !dir.exists());

        let partial = PartialDir::create(&dir).unwrap();
        std::fs::write(partial.path().join(STATE_FILE), b"all").unwrap();
        partial
            .commit(&dir, b"{\"x\": 1}\n", SnapshotMemory::Stream)
            .unwrap();
        assert_eq!(std::fs::read(dir.join(STATE_FILE)).unwrap(), b"all");
        assert!(dir.join(MANIFEST_FILE).exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
