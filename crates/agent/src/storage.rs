//! Disks the host attached, as the kernel command line's boot words
//! ([`BootWords`]) describe them:
//!
//! - `nook.root=SERIAL`: an ext4 image root. It is mounted read-only
//!   (`ro,noload`) under a writable overlay (tmpfs, or the ext4 disk named
//!   by `nook.scratch=SERIAL`); /dev, /proc, /sys, /run and /tmp move into
//!   it, and it becomes `/` (MS_MOVE + chroot, as switch_root does). The
//!   image disk and the writable layer stay visible at /run/nook/lower and
//!   /run/nook/rw.
//! - `nook.mount=SERIAL:PATH:ro|rw` (repeatable): an ext4 volume mounted at
//!   PATH (percent-encoded) in the final root.
//!
//! Disks are found by their virtio-blk serial (`/sys/block/vdX/serial`),
//! never by their order.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount, MsFlags};
use nook_proto::{BootWords, DiskMount};

use crate::log;

/// How long to wait for an attached disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Where the image root is put together before it becomes `/`.
const STAGE: &str = "/.nook";

/// Pseudo file systems that move from the initramfs into the image root.
const MOVED_MOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/run", "/tmp"];

/// Volumes mounted by [`mount_volumes`], unmounted at power off.
static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Sets up the image root (when asked) and the volumes.
pub fn setup(words: &BootWords) -> io::Result<()> {
    if let Some(root) = &words.root {
        switch_to_image_root(root, words.scratch.as_deref())?;
    }
    for m in &words.mounts {
        mount_volume(m)?;
    }
    Ok(())
}

fn err(what: String) -> impl FnOnce(nix::Error) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// The `/dev` node of the virtio-blk disk with this serial, once both its
/// sysfs entry and its device node exist.
fn find_disk(serial: &str) -> io::Result<PathBuf> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Ok(dir) = fs::read_dir("/sys/block") {
            for entry in dir.flatten() {
                let s = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
                if s.trim_end_matches(['\n', '\0']) == serial {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no disk with serial {serial} appeared in {DISK_WAIT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn mount_ext4(dev: &Path, target: &Path, read_only: bool, data: Option<&str>) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(Some(dev), target, Some("ext4"), flags, data).map_err(err(format!(
        "mount {} on {}",
        dev.display(),
        target.display()
    )))
}

fn switch_to_image_root(root_serial: &str, scratch: Option<&str>) -> io::Result<()> {
    let stage = Path::new(STAGE);
    let lower = stage.join("lower");
    let rw = stage.join("rw");
    let new_root = stage.join("root");
    mount_ext4(&find_disk(root_serial)?, &lower, true, Some("noload"))?;
    match scratch {
        Some(serial) => mount_ext4(&find_disk(serial)?, &rw, false, None)?,
        None => {
            fs::create_dir_all(&rw)?;
            mount(
                Some("tmpfs"),
                &rw,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .map_err(err(format!("mount tmpfs on {}", rw.display())))?;
        }
    }
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&new_root)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &new_root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(err(format!(
        "mount overlay on {} (is the overlay module loaded?)",
        new_root.display()
    )))?;
    for m in MOVED_MOUNTS {
        let target = new_root.join(m.trim_start_matches('/'));
        // An image may have a symlink here (`/run -> /var/run`): replace it.
        if fs::symlink_metadata(&target).is_ok_and(|t| !t.is_dir()) {
            fs::remove_file(&target)?;
        }
        fs::create_dir_all(&target)?;
        mount(
            Some(*m),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(err(format!("move {m} into the image root")))?;
    }
    // Keep the image disk and the writable layer visible in the new root
    // (read-only image at /run/nook/lower, upper layer under /run/nook/rw).
    for (mnt, name) in [(&lower, "lower"), (&rw, "rw")] {
        let target = new_root.join("run/nook").join(name);
        fs::create_dir_all(&target)?;
        mount(
            Some(mnt.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(err(format!("move {} to /run/nook/{name}", mnt.display())))?;
    }
    // switch_root: make the new root `/` and forget the initramfs.
    std::env::set_current_dir(&new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(err("move the image root onto /".into()))?;
    nix::unistd::chroot(".").map_err(err("chroot into the image root".into()))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn mount_volume(m: &DiskMount) -> io::Result<()> {
    let dev = find_disk(&m.serial)?;
    let target = Path::new(&m.path);
    let mounted = mount_ext4(&dev, target, m.read_only, None);
    if let (Err(e), true) = (&mounted, m.read_only) {
        // A volume left unclean by a crashed VM has a journal to replay,
        // which a read-only disk cannot do: show it as it was last synced.
        log(&format!("{e}; retrying without the journal"));
        mount_ext4(&dev, target, true, Some("noload"))?;
    } else {
        mounted?;
    }
    MOUNTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(target.to_path_buf());
    Ok(())
}

/// Unmounts the volumes (last mounted first) so they are clean on the host;
/// one that stays busy is remounted read-only. Called at power off, after
/// every other process is gone.
pub fn unmount_volumes() {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(path) = mounted.pop() {
        if let Err(e) = umount(&path) {
            log(&format!("cannot unmount {}: {e}", path.display()));
            let _ = mount(
                None::<&str>,
                &path,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
}
