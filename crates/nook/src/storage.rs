//! Storage a VM boots with: an image root (read-only ext4 rootfs plus a
//! writable layer), and volumes (ext4 files mounted in the guest).
//!
//! Every disk is a virtio-blk device with a serial; boot words on the kernel
//! command line ([`BootWords`]) tell the guest agent which serial is what
//! (see `docs/protocol.md`): `nook.root=nook-root`,
//! `nook.scratch=nook-scratch`, `nook.mount=nook-volN:PATH:ro|rw`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use nook_fsutil::{io_err, IoError};
use nook_image::{ImageConfig, ImageInfo};
use nook_proto::{BootWords, DiskMount};

use crate::engine::DiskSpec;
use crate::lock::VolumeLock;

/// Serial of the image root disk.
pub(crate) const ROOT_SERIAL: &str = "nook-root";
/// Serial of the scratch disk that holds the writable layer.
pub(crate) const SCRATCH_SERIAL: &str = "nook-scratch";

/// Default size of a new named volume: 1 GiB (sparse).
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// Boot from an image: its ext4 rootfs, read-only and shared by every VM,
/// under a per-VM writable overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    /// The read-only ext4 root file system.
    pub rootfs: PathBuf,
    /// Run-time defaults (env, working directory, user, entrypoint, cmd)
    /// applied to every command run in the VM.
    pub config: ImageConfig,
    /// Keep the writable layer on an ext4 scratch disk of this many bytes
    /// (sparse, deleted with the VM) instead of in guest memory (tmpfs).
    pub scratch_size: Option<u64>,
}

impl ImageRoot {
    /// The root of an image from the store, with a tmpfs writable layer.
    pub fn new(info: &ImageInfo) -> ImageRoot {
        ImageRoot {
            rootfs: info.rootfs.clone(),
            config: info.config.clone(),
            scratch_size: None,
        }
    }
}

/// An ext4 disk image mounted in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The ext4 image file on the host (a named volume's file, or any).
    pub disk: PathBuf,
    /// Absolute mount point in the guest (created if missing).
    pub guest_path: String,
    /// Attach the disk read-only: guest writes fail.
    pub read_only: bool,
}

/// Creating, listing or removing volumes failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name `{0}`: use letters, digits, `_`, `.` and `-` (at most 64, not starting with `.` or `-`)")]
    InvalidName(String),
    #[error("no volume named `{0}`")]
    NotFound(String),
    #[error("invalid volume mount point `{0}`: it must be an absolute guest path")]
    InvalidMountPoint(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("mkfs.ext4 is not installed: install e2fsprogs (apt-get install e2fsprogs)")]
    MkfsMissing,
    #[error("mkfs.ext4 failed on {path}: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Its ext4 image file.
    pub path: PathBuf,
    /// File system size in bytes.
    pub size: u64,
    /// Bytes the sparse file occupies on the host disk.
    pub allocated: u64,
}

/// Named volumes: `ROOT/NAME.ext4`, sparse ext4 files that outlive VMs
/// (`$NOOK_HOME/volumes`).
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<VolumeStore, VolumeError> {
        std::fs::create_dir_all(root).map_err(io_err("create", root))?;
        Ok(VolumeStore {
            root: root.to_path_buf(),
        })
    }

    /// The store of `nook_home`.
    pub fn in_home(nook_home: &Path) -> Result<VolumeStore, VolumeError> {
        VolumeStore::open(&nook_home.join("volumes"))
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, VolumeError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(VolumeError::InvalidName(name.to_string()));
        }
        Ok(self.root.join(format!("{name}.ext4")))
    }

    fn describe(name: &str, path: PathBuf) -> Result<Volume, VolumeError> {
        let meta = std::fs::metadata(&path).map_err(io_err("stat", &path))?;
        Ok(Volume {
            name: name.to_string(),
            size: meta.len(),
            allocated: meta.blocks() * 512,
            path,
        })
    }

    /// The volume `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Volume>, VolumeError> {
        let path = self.path_of(name)?;
        if !path.exists() {
            return Ok(None);
        }
        Self::describe(name, path).map(Some)
    }

    /// The volume `name`, created (sparse, ext4, `size` bytes) if missing.
    /// Concurrent creators race safely: the file is made under a temporary
    /// name and linked into place; the loser uses the winner's.
    pub fn ensure(&self, name: &str, size: u64) -> Result<Volume, VolumeError> {
        let path = self.path_of(name)?;
        if !path.exists() {
            let tmp = unique_temp(&self.root, name);
            let made = make_ext4(&tmp, size, name);
            let linked = made.and_then(|()| match std::fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(io_err("create", &path)(e).into()),
            });
            let _ = std::fs::remove_file(&tmp);
            linked?;
        }
        Self::describe(name, path)
    }

    /// Every named volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let entry = entry.map_err(io_err("list", &self.root))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".ext4")) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            out.push(Self::describe(name, entry.path())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the volume `name` and its data; refused while a VM uses it
    /// ([`VolumeError::Locked`] names the holder).
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let path = self.path_of(name)?;
        if !path.exists() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        VolumeLock::with_exclusive(&path, "nook volume rm", || {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(crate::lock::lock_path(&path));
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(VolumeError::NotFound(name.to_string()))
                }
                Err(e) => Err(io_err("remove", &path)(e).into()),
            }
        })?
    }
}

fn unique_temp(dir: &Path, name: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Finds `mkfs.ext4` on PATH or in the sbin directories (often not on a
/// user's PATH).
fn mkfs_ext4() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Creates `path` as a sparse file of `size` bytes holding an empty ext4
/// file system labelled `label` (journal on, inode tables initialised now so
/// the guest does no background zeroing).
pub fn make_ext4(path: &Path, size: u64, label: &str) -> Result<(), VolumeError> {
    let mkfs = mkfs_ext4().ok_or(VolumeError::MkfsMissing)?;
    let file = std::fs::File::create(path).map_err(io_err("create", path))?;
    file.set_len(size).map_err(io_err("size", path))?;
    drop(file);
    let label: String = label.chars().take(16).collect();
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", &label])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
        .arg(path)
        .output()
        .map_err(io_err("run mkfs.ext4 for", path))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(VolumeError::Mkfs {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A file deleted when dropped (a VM's scratch disk).
#[derive(Debug)]
pub(crate) struct TempFile(pub(crate) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The disks and boot words (root, scratch, mounts) for a VM's storage.
#[derive(Debug, Default)]
pub(crate) struct StoragePlan {
    pub disks: Vec<DiskSpec>,
    pub words: BootWords,
    pub scratch: Option<TempFile>,
    /// The volumes' locks, held for the VM's life.
    pub locks: Vec<VolumeLock>,
}

/// Plans the disks of `image` and `volumes`, locking each volume for
/// `holder` (see `lock.rs`); a scratch disk is created in `scratch_dir`.
pub(crate) fn plan(
    image: Option<&ImageRoot>,
    volumes: &[VolumeMount],
    scratch_dir: &Path,
    holder: &str,
) -> Result<StoragePlan, VolumeError> {
    let mut plan = StoragePlan::default();
    if let Some(v) = volumes.iter().find(|v| !v.guest_path.starts_with('/')) {
        return Err(VolumeError::InvalidMountPoint(v.guest_path.clone()));
    }
    for v in volumes {
        plan.locks
            .push(VolumeLock::acquire(&v.disk, holder, v.read_only)?);
    }
    if let Some(img) = image {
        plan.disks.push(DiskSpec {
            path: img.rootfs.clone(),
            read_only: true,
            serial: ROOT_SERIAL.into(),
        });
        plan.words.root = Some(ROOT_SERIAL.into());
        if let Some(size) = img.scratch_size {
            std::fs::create_dir_all(scratch_dir).map_err(io_err("create", scratch_dir))?;
            let file = TempFile(unique_temp(scratch_dir, "scratch"));
            make_ext4(&file.0, size, SCRATCH_SERIAL)?;
            plan.disks.push(DiskSpec {
                path: file.0.clone(),
                read_only: false,
                serial: SCRATCH_SERIAL.into(),
            });
            plan.words.scratch = Some(SCRATCH_SERIAL.into());
            plan.scratch = Some(file);
        }
    }
    for (i, v) in volumes.iter().enumerate() {
        let serial = format!("nook-vol{i}");
        plan.words.mounts.push(DiskMount {
            serial: serial.clone(),
            path: v.guest_path.clone(),
            read_only: v.read_only,
        });
        plan.disks.push(DiskSpec {
            path: v.disk.clone(),
            read_only: v.read_only,
            serial,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_disks_by_serial() {
        let dir = tempfile::tempdir().unwrap();
        let image = ImageRoot {
            rootfs: "/images/x/rootfs.ext4".into(),
            config: ImageConfig::default(),
            scratch_size: None,
        };
        let vols = [
            VolumeMount {
                disk: dir.path().join("a.ext4"),
                guest_path: "/data".into(),
                read_only: false,
            },
            VolumeMount {
                disk: dir.path().join("b.ext4"),
                guest_path: "/in put".into(),
                read_only: true,
            },
        ];
        let p = plan(Some(&image), &vols, dir.path(), "test").unwrap();
        assert_eq!(
            p.words.to_words(),
            [
                "nook.root=nook-root",
                "nook.mount=nook-vol0:/data:rw",
                "nook.mount=nook-vol1:/in%20put:ro"
            ]
        );
        let serials: Vec<_> = p.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["nook-root", "nook-vol0", "nook-vol1"]);
        assert!(p.disks[0].read_only && !p.disks[1].read_only && p.disks[2].read_only);

        let bad = [VolumeMount {
            disk: "/v/a".into(),
            guest_path: "data".into(),
            read_only: false,
        }];
        assert!(matches!(
            plan(None, &bad, dir.path(), "test"),
            Err(VolumeError::InvalidMountPoint(_))
        ));
    }

    #[test]
    fn named_volumes_are_created_listed_and_removed() {
        if mkfs_ext4().is_none() {
            eprintln!("skipping: mkfs.ext4 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        assert!(store.get("data").unwrap().is_none());
        let v = store.ensure("data", 64 << 20).unwrap();
        assert_eq!(v.size, 64 << 20);
        assert!(v.allocated < v.size, "the volume file is not sparse");
        // A volume in use cannot be removed.
        let held = VolumeLock::acquire(&v.path, "nook run", false).unwrap();
        let e = store.remove("data").unwrap_err();
        assert!(matches!(e, VolumeError::Locked(_)), "{e}");
        assert!(e.to_string().contains("in use by nook run"), "{e}");
        drop(held);
        // A second ensure keeps the existing file (and its size).
        assert_eq!(store.ensure("data", 128 << 20).unwrap().size, 64 << 20);
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["data"]
        );
        store.remove("data").unwrap();
        assert!(matches!(
            store.remove("data"),
            Err(VolumeError::NotFound(_))
        ));
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(
                matches!(store.ensure(bad, 1 << 20), Err(VolumeError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn scratch_disk_is_made_and_removed_with_the_plan() {
        if mkfs_ext4().is_none() {
            eprintln!("skipping: mkfs.ext4 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = ImageRoot {
            rootfs: "/r".into(),
            config: ImageConfig::default(),
            scratch_size: Some(32 << 20),
        };
        let p = plan(Some(&image), &[], dir.path(), "test").unwrap();
        assert_eq!(
            p.words.to_words(),
            ["nook.root=nook-root", "nook.scratch=nook-scratch"]
        );
        let scratch = p.disks[1].path.clone();
        assert!(scratch.is_file() && !p.disks[1].read_only);
        drop(p);
        assert!(!scratch.exists(), "scratch disk outlived its VM");
    }
}
