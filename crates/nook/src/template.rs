//! Template snapshots: the first boot of a configuration is snapshotted
//! once its agent is ready, and later starts of the same configuration
//! restore a copy-on-write clone of it instead of booting, as hosted
//! sandboxes create every sandbox from a pre-booted template.
//!
//! A template is keyed by everything the booted state depends on: the
//! engine, the kernel and initramfs files (the initramfs is named by the
//! hash of the agent, busybox and modules in it), the kernel command line
//! (which carries the image root and its disk serials), memory, vCPUs, the
//! disks attached, and nook's own version and protocol. A change to any of
//! them is a new key, so a stale template is never used; stale ones are
//! removed by [`gc_templates`] (`nook image gc`, `nook setup --update`).
//!
//! ```text
//! $NOOK_HOME/templates/
//!   KEY/            a snapshot directory (see `snapshot.rs`)
//!     nook.json
//!     engine/
//!     template.json the inputs the key was made from (for gc)
//! ```
//!
//! Configurations a restore cannot carry boot as before: writable volumes
//! and shares (their host-side state changes between runs), and an image's
//! scratch disk (a per-VM file). Restored clones get the host's clock and
//! fresh entropy through the same `Resync` as every restore.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{DiskSpec, EngineId};
use crate::error::VmError;

/// Templates kept at most: making one more removes the least recently used.
pub const MAX_TEMPLATES: usize = 16;

/// Version of the key's inputs and of `template.json`. Raised when what
/// the engines add to a boot changes without showing in the inputs: a
/// template keeps what its kernel chose at boot. 2: the qemu engine under
/// TCG boots with `tsc=reliable` (the clock source is the TSC, not
/// refined-jiffies).
const FORMAT: u32 = 2;
/// The inputs file inside a template directory.
pub(crate) const INPUTS_FILE: &str = "template.json";

/// The directory of templates under `home`.
pub fn templates_dir(home: &Path) -> PathBuf {
    home.join("templates")
}

/// A file an input names, with what identifies its contents cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileInput {
    path: PathBuf,
    len: u64,
    modified_ns: u128,
}

impl FileInput {
    fn of(path: &Path) -> Option<FileInput> {
        let meta = std::fs::metadata(path).ok()?;
        let modified_ns = meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(FileInput {
            path: path.to_path_buf(),
            len: meta.len(),
            modified_ns,
        })
    }

    fn is_current(&self) -> bool {
        FileInput::of(&self.path).as_ref() == Some(self)
    }
}

/// A disk as the template saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DiskInput {
    file: FileInput,
    read_only: bool,
    serial: String,
}

/// Everything a template's booted state depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TemplateInputs {
    format: u32,
    nook_version: String,
    protocol: u32,
    engine: EngineId,
    kernel: FileInput,
    initramfs: FileInput,
    cmdline: String,
    memory_mib: u32,
    vcpus: u8,
    disks: Vec<DiskInput>,
}

/// What a machine to be booted looks like, as far as templates care.
#[derive(Debug)]
pub(crate) struct TemplateRequest<'a> {
    pub engine: EngineId,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub cmdline: &'a str,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub disks: &'a [DiskSpec],
}

/// A template's place in the cache, whether or not it exists yet.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub key: String,
    pub path: PathBuf,
    pub inputs: TemplateInputs,
}

impl Template {
    /// The template for `req`, or `None` when an input file cannot be
    /// read (the boot will say why).
    pub fn for_request(home: &Path, req: &TemplateRequest<'_>) -> Option<Template> {
        let mut disks = Vec::with_capacity(req.disks.len());
        for d in req.disks {
            if !d.read_only {
                // A writable disk's contents change under the snapshot.
                return None;
            }
            disks.push(DiskInput {
                file: FileInput::of(&d.path)?,
                read_only: d.read_only,
                serial: d.serial.clone(),
            });
        }
        let inputs = TemplateInputs {
            format: FORMAT,
            nook_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: nook_proto::PROTOCOL_VERSION,
            engine: req.engine,
            kernel: FileInput::of(req.kernel)?,
            initramfs: FileInput::of(req.initramfs)?,
            cmdline: req.cmdline.to_string(),
            memory_mib: req.memory_mib,
            vcpus: req.vcpus,
            disks,
        };
        let key = key_of(&inputs);
        Some(Template {
            path: templates_dir(home).join(&key),
            key,
            inputs,
        })
    }

    /// The engine the template is for.
    pub fn engine(&self) -> EngineId {
        self.inputs.engine
    }

    /// Whether a complete template is on disk.
    pub fn exists(&self) -> bool {
        self.path.join(INPUTS_FILE).is_file()
    }

    /// The bytes of `template.json`.
    pub fn inputs_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.inputs).unwrap_or_default()
    }

    /// Marks the template as just used (its `template.json`'s mtime), for
    /// [`trim_templates`].
    pub fn touch(&self) {
        if let Ok(f) = std::fs::File::options()
            .append(true)
            .open(self.path.join(INPUTS_FILE))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes a template that could not be restored, so the next start
    /// makes it again.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The key: a hash of the inputs' canonical JSON.
fn key_of(inputs: &TemplateInputs) -> String {
    let json = serde_json::to_vec(inputs).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`gc_templates`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateGc {
    /// Templates removed.
    pub removed: usize,
    /// Templates kept.
    pub kept: usize,
    /// Bytes of disk the removed ones used.
    pub freed_bytes: u64,
}

/// Removes templates that can never be used again (an input file changed or
/// is gone, another nook version made them, or they are incomplete), or
/// every template with `all`. Templates being made right now are hidden
/// partial directories and left alone.
pub fn gc_templates(home: &Path, all: bool) -> Result<TemplateGc, VmError> {
    let dir = templates_dir(home);
    let mut gc = TemplateGc::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(gc),
        Err(source) => return Err(VmError::SnapshotIo { path: dir, source }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if all || !is_usable(&path, &name) {
            let bytes = crate::snapshot::disk_usage(&path);
            std::fs::remove_dir_all(&path)
                .map_err(|source| VmError::SnapshotIo { path, source })?;
            gc.removed += 1;
            gc.freed_bytes += bytes;
        } else {
            gc.kept += 1;
        }
    }
    Ok(gc)
}

/// Removes the least recently used templates beyond `keep`. Returns how
/// many were removed.
pub(crate) fn trim_templates(home: &Path, keep: usize) -> usize {
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(templates_dir(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let used = std::fs::metadata(e.path().join(INPUTS_FILE))
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            (used, e.path())
        })
        .collect();
    if all.len() <= keep {
        return 0;
    }
    all.sort();
    let excess = all.len() - keep;
    all.iter()
        .take(excess)
        .filter(|(_, path)| std::fs::remove_dir_all(path).is_ok())
        .count()
}

fn is_usable(path: &Path, name: &str) -> bool {
    let Some(inputs) = std::fs::read(path.join(INPUTS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<TemplateInputs>(&b).ok())
    else {
        return false;
    };
    inputs.format == FORMAT
        && inputs.nook_version == env!("CARGO_PKG_VERSION")
        && inputs.protocol == nook_proto::PROTOCOL_VERSION
        && key_of(&inputs) == name
        && inputs.kernel.is_current()
        && inputs.initramfs.is_current()
        && inputs.disks.iter().all(|d| d.file.is_current())
        && crate::snapshot::Snapshot::open(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let k = dir.join("vmlinuz");
        let i = dir.join("initrd");
        let d = dir.join("root.ext4");
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initramfs").unwrap();
        std::fs::write(&d, b"disk").unwrap();
        (k, i, d)
    }

    fn request<'a>(
        k: &'a Path,
        i: &'a Path,
        disks: &'a [DiskSpec],
        memory_mib: u32,
    ) -> TemplateRequest<'a> {
        TemplateRequest {
            engine: EngineId::QemuTcg,
            kernel: k,
            initramfs: i,
            cmdline: "console=ttyS0 nook.root=r",
            memory_mib,
            vcpus: 1,
            disks,
        }
    }

    #[test]
    fn every_input_changes_the_key_and_the_same_inputs_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i, d) = files(dir.path());
        let disks = [DiskSpec {
            path: d.clone(),
            read_only: true,
            serial: "r".into(),
        }];
        let home = dir.path();
        let base = Template::for_request(home, &request(&k, &i, &disks, 256)).unwrap();
        let again = Template::for_request(home, &request(&k, &i, &disks, 256)).unwrap();
        assert_eq!(base.key, again.key);
        let other_memory = Template::for_request(home, &request(&k, &i, &disks, 512)).unwrap();
        assert_ne!(base.key, other_memory.key);
        let mut r = request(&k, &i, &disks, 256);
        r.engine = EngineId::Kvm;
        assert_ne!(base.key, Template::for_request(home, &r).unwrap().key);
        let mut r = request(&k, &i, &disks, 256);
        r.cmdline = "console=ttyS0 nook.root=other";
        assert_ne!(base.key, Template::for_request(home, &r).unwrap().key);
        let no_disk = Template::for_request(home, &request(&k, &i, &[], 256)).unwrap();
        assert_ne!(base.key, no_disk.key);
        // A rebuilt initramfs (another agent) is another template.
        std::fs::write(&i, b"initramfs, rebuilt").unwrap();
        let rebuilt = Template::for_request(home, &request(&k, &i, &disks, 256)).unwrap();
        assert_ne!(base.key, rebuilt.key);
    }

    #[test]
    fn writable_disks_and_missing_files_make_no_template() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i, d) = files(dir.path());
        let rw = [DiskSpec {
            path: d,
            read_only: false,
            serial: "v".into(),
        }];
        assert!(Template::for_request(dir.path(), &request(&k, &i, &rw, 256)).is_none());
        let gone = dir.path().join("gone");
        assert!(Template::for_request(dir.path(), &request(&gone, &i, &[], 256)).is_none());
    }

    #[test]
    fn trimming_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let p = templates_dir(home).join(name);
            std::fs::create_dir_all(&p).unwrap();
            let f = std::fs::File::create(p.join(INPUTS_FILE)).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(10 * i as u64))
                .unwrap();
        }
        std::fs::create_dir_all(templates_dir(home).join(".partial")).unwrap();
        assert_eq!(trim_templates(home, 3), 0);
        assert_eq!(trim_templates(home, 2), 1);
        assert!(!templates_dir(home).join("old").exists());
        assert!(templates_dir(home).join("mid").exists());
        assert!(templates_dir(home).join(".partial").exists());
    }

    #[test]
    fn gc_removes_templates_whose_inputs_changed_and_keeps_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i, _) = files(dir.path());
        let home = dir.path().join("home");
        let t = Template::for_request(&home, &request(&k, &i, &[], 256)).unwrap();
        std::fs::create_dir_all(&t.path).unwrap();
        std::fs::write(t.path.join(INPUTS_FILE), t.inputs_json()).unwrap();
        let partial = templates_dir(&home).join(".abc.partial-1");
        std::fs::create_dir_all(&partial).unwrap();
        // No snapshot manifest inside: incomplete, so removed.
        let gc = gc_templates(&home, false).unwrap();
        assert_eq!((gc.removed, gc.kept), (1, 0));
        assert!(!t.path.exists());
        assert!(partial.exists(), "a template being made is left alone");
        assert_eq!(
            gc_templates(&dir.path().join("none"), false).unwrap(),
            TemplateGc::default()
        );
    }
}
