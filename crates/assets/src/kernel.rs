//! Getting a kernel and the files of the modules a request needs, from
//! Debian's packages (through the cache) or from local files.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::Layout;
use crate::debian::{self, DebPin};
use crate::error::{cache_err, AssetsError};
use crate::index::FileStamp;
use crate::kernel_entry::{self, KernelManifest};
use crate::modules::{ModuleError, ModuleTable};
use crate::progress::Progress;

/// One module to put in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModuleFile {
    /// Normalized module name.
    pub name: String,
    /// File name in the guest (`virtio-rng.ko`).
    pub file_name: String,
    /// The file on the host (possibly compressed, for local kernels).
    pub path: PathBuf,
}

/// A kernel ready to use and the modules it needs, in load order.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedKernel {
    pub image: PathBuf,
    pub config: Option<PathBuf>,
    pub release: String,
    pub modules: Vec<ModuleFile>,
    /// Files whose stamps guard this result in the fast-path index.
    pub stamps: Vec<FileStamp>,
    pub downloaded: bool,
}

fn stamp(path: &Path, op: &'static str) -> Result<FileStamp, AssetsError> {
    FileStamp::of(path).map_err(cache_err(op, path))
}

/// A Debian kernel through the cache: reuse the pinned entry if it is
/// intact and holds the needed modules, else (re-)resolve, download and
/// extract. `refresh` re-resolves the package with apt first.
pub(crate) fn debian(
    layout: &Layout,
    requested: &str,
    wanted: &[String],
    refresh: bool,
    progress: &Progress,
) -> Result<ResolvedKernel, AssetsError> {
    let pin_path = layout.pin(requested);
    let saved = if refresh {
        None
    } else {
        DebPin::load(&pin_path)
    };
    if let Some(pin) = &saved {
        if let Some(k) = reuse_entry(layout, pin, wanted)? {
            return with_pin_stamp(k, &pin_path);
        }
    }
    // The entry is missing, damaged or lacks modules: ask apt what is
    // current (it may have moved on since the pin was written).
    let pin = debian::resolve(requested, progress)?;
    tracing::debug!(target: "nook::assets", package = %pin.package, version = %pin.version, sha256 = %pin.sha256, "resolved");
    if saved.as_ref() != Some(&pin) {
        if let Some(k) = reuse_entry(layout, &pin, wanted)? {
            save_pin(&pin, &pin_path)?;
            return with_pin_stamp(k, &pin_path);
        }
    }
    let entry = layout.kernels().join(&pin.sha256);
    // Keep the modules an older copy of this entry held, so requests that
    // needed them stay served.
    let mut keep: Vec<String> = wanted.to_vec();
    if let Some(old) = KernelManifest::load(&entry) {
        keep.extend(old.modules.keys().cloned());
    }
    let tmp = layout.tmp();
    std::fs::create_dir_all(&tmp).map_err(cache_err("create directory", &tmp))?;
    let download_dir = tempfile::Builder::new()
        .prefix("download-")
        .tempdir_in(&tmp)
        .map_err(cache_err("create temporary directory in", &tmp))?;
    let deb = debian::download(&pin, download_dir.path(), progress)?;
    let staging = tempfile::Builder::new()
        .prefix("entry-")
        .tempdir_in(&tmp)
        .map_err(cache_err("create temporary directory in", &tmp))?;
    let staged = staging.path().join("entry");
    let staged_manifest = kernel_entry::extract_deb(&deb, &pin, &staged, &keep, progress)?;
    drop(download_dir);
    kernel_entry::install(&staged, &entry, &staged_manifest)?;
    save_pin(&pin, &pin_path)?;
    let manifest = KernelManifest::load(&entry).ok_or_else(|| {
        cache_err("read back manifest of", entry.clone())(std::io::Error::other(
            "manifest missing after install",
        ))
    })?;
    let mut k = from_manifest(&entry, &manifest, wanted)?;
    k.downloaded = true;
    with_pin_stamp(k, &pin_path)
}

/// The pinned entry if it is intact and has every module `wanted` needs.
/// The caller adds the pin's stamp once the pin file is final.
fn reuse_entry(
    layout: &Layout,
    pin: &DebPin,
    wanted: &[String],
) -> Result<Option<ResolvedKernel>, AssetsError> {
    let entry = layout.kernels().join(&pin.sha256);
    let Some(manifest) = KernelManifest::load(&entry) else {
        return Ok(None);
    };
    if manifest.deb_sha256 != pin.sha256 {
        return Ok(None);
    }
    let order = manifest
        .table
        .load_order(wanted)
        .map_err(|source| AssetsError::Modules {
            release: manifest.release.clone(),
            source,
        })?;
    if !manifest.verify(&entry, &order) {
        return Ok(None);
    }
    let k = from_manifest(&entry, &manifest, wanted)?;
    tracing::debug!(target: "nook::assets", entry = %entry.display(), "kernel reused");
    Ok(Some(k))
}

/// Saves the pin unless it is unchanged: rewriting it would change its
/// stamp and needlessly send every other request down the slow path.
fn save_pin(pin: &DebPin, path: &Path) -> Result<(), AssetsError> {
    if DebPin::load(path).as_ref() == Some(pin) {
        return Ok(());
    }
    pin.save(path)
}

fn with_pin_stamp(mut k: ResolvedKernel, pin_path: &Path) -> Result<ResolvedKernel, AssetsError> {
    if pin_path.exists() {
        k.stamps.push(stamp(pin_path, "stat")?);
    }
    Ok(k)
}

fn from_manifest(
    entry: &Path,
    manifest: &KernelManifest,
    wanted: &[String],
) -> Result<ResolvedKernel, AssetsError> {
    let modules_err = |source| AssetsError::Modules {
        release: manifest.release.clone(),
        source,
    };
    let order = manifest.table.load_order(wanted).map_err(modules_err)?;
    let mut modules = Vec::new();
    for name in order {
        let path = manifest.module_path(entry, &name).ok_or_else(|| {
            modules_err(ModuleError::NotFound {
                name: name.clone(),
                wanted_by: "the cached kernel entry".to_owned(),
            })
        })?;
        let file_name = manifest.table.modules[&name].plain_file_name();
        modules.push(ModuleFile {
            name,
            file_name,
            path,
        });
    }
    let image = manifest.kernel_path(entry);
    Ok(ResolvedKernel {
        stamps: vec![stamp(&image, "stat")?],
        image,
        config: manifest.config_path(entry),
        release: manifest.release.clone(),
        modules,
        downloaded: false,
    })
}

/// A kernel image on disk, used in place, with modules from `modules_dir`.
pub(crate) fn local(
    image: &Path,
    modules_dir: Option<&Path>,
    wanted: &[String],
) -> Result<ResolvedKernel, AssetsError> {
    let input_err = |source| AssetsError::Input {
        what: "kernel image",
        path: image.to_owned(),
        hint: "check the --kernel path (or the KERNEL variable)",
        source,
    };
    let mut stamps = vec![FileStamp::of(image).map_err(input_err)?];
    let mut head = Vec::with_capacity(64 << 10);
    std::fs::File::open(image)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(input_err)?;
    let dir_release = modules_dir
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    let release = bzimage_release(&head)
        .or(dir_release)
        .unwrap_or_else(|| "unknown".to_owned());
    let Some(dir) = modules_dir else {
        if !wanted.is_empty() {
            tracing::info!(target: "nook::assets", kernel = %image.display(), "no modules directory given: assuming the kernel has its drivers built in");
        }
        return Ok(ResolvedKernel {
            image: image.to_owned(),
            config: None,
            release,
            modules: Vec::new(),
            stamps,
            downloaded: false,
        });
    };
    let modules_err = |source| AssetsError::Modules {
        release: release.clone(),
        source,
    };
    let dep = dir.join("modules.dep");
    if let Ok(s) = FileStamp::of(&dep) {
        stamps.push(s);
    } else if let Ok(s) = FileStamp::of(dir) {
        stamps.push(s);
    }
    let table = ModuleTable::from_dir(dir).map_err(modules_err)?;
    let order = table.load_order(wanted).map_err(modules_err)?;
    let mut modules = Vec::new();
    for name in order {
        let info = &table.modules[&name];
        let path = dir.join(&info.path);
        stamps.push(FileStamp::of(&path).map_err(|source| {
            modules_err(ModuleError::Read {
                path: path.clone(),
                source,
            })
        })?);
        modules.push(ModuleFile {
            file_name: info.plain_file_name(),
            name,
            path,
        });
    }
    Ok(ResolvedKernel {
        image: image.to_owned(),
        config: None,
        release,
        modules,
        stamps,
        downloaded: false,
    })
}

/// The release (`uname -r`) a bzImage announces in its setup header's
/// `kernel_version` string, if it is a bzImage.
pub(crate) fn bzimage_release(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20E)?, *head.get(0x20F)?]);
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let text = head.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    let valid = !release.is_empty()
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b));
    valid.then(|| release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::fake_module;

    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let ptr: u16 = 0x600;
        img[0x20E..0x210].copy_from_slice(&ptr.to_le_bytes());
        let at = usize::from(ptr) + 0x200;
        img[at..at + version.len()].copy_from_slice(version.as_bytes());
        img
    }

    #[test]
    fn reads_the_release_of_a_bzimage() {
        let img = fake_bzimage("6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0");
        assert_eq!(
            bzimage_release(&img).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(bzimage_release(b"\x7fELF"), None);
        assert_eq!(bzimage_release(&img[..0x300]), None, "truncated");
        assert_eq!(bzimage_release(&fake_bzimage("\0")), None);
    }

    #[test]
    fn only_complete_intact_entries_are_reused() {
        use crate::kernel_entry::tests::{manifest_of, pin};
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let pin = pin();
        let entry = layout.kernels().join(&pin.sha256);
        let wanted = vec!["virtio".to_owned()];

        // No entry, or an entry without a manifest (an interrupted run).
        assert!(reuse_entry(&layout, &pin, &wanted).unwrap().is_none());
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("vmlinuz"), b"KERNEL").unwrap();
        assert!(reuse_entry(&layout, &pin, &wanted).unwrap().is_none());

        // A complete entry is reused, with the kernel stamped.
        manifest_of(&entry, &[("virtio", b"m1")]);
        let k = reuse_entry(&layout, &pin, &wanted).unwrap().unwrap();
        assert_eq!(k.release, "9.9.9-test");
        assert_eq!(k.modules[0].path, entry.join("modules/virtio.ko"));
        assert_eq!(k.stamps[0].path, entry.join("vmlinuz"));
        assert!(!k.downloaded);

        // A module the entry does not keep, a damaged module, or an entry
        // of another .deb: not reused.
        let mut table_only = manifest_of(&entry, &[("virtio", b"m1")]);
        table_only.table.modules.insert(
            "vsock".into(),
            crate::modules::ModuleInfo {
                path: "kernel/vsock.ko".into(),
                depends: vec![],
            },
        );
        std::fs::write(
            entry.join("manifest.json"),
            serde_json::to_vec(&table_only).unwrap(),
        )
        .unwrap();
        assert!(reuse_entry(&layout, &pin, &["vsock".into()])
            .unwrap()
            .is_none());
        std::fs::write(entry.join("modules/virtio.ko"), b"m2").unwrap();
        assert!(reuse_entry(&layout, &pin, &wanted).unwrap().is_none());
        manifest_of(&entry, &[("virtio", b"m1")]);
        let other = DebPin {
            sha256: "11".repeat(32),
            ..pin.clone()
        };
        std::fs::rename(&entry, layout.kernels().join(&other.sha256)).unwrap();
        assert!(reuse_entry(&layout, &pin, &wanted).unwrap().is_none());
        assert!(
            reuse_entry(&layout, &other, &wanted).unwrap().is_none(),
            "manifest names another .deb"
        );

        // Unknown modules are an error, not a reason to download again.
        manifest_of(&entry, &[("virtio", b"m1")]);
        assert!(matches!(
            reuse_entry(&layout, &pin, &["nope".into()]),
            Err(AssetsError::Modules { .. })
        ));
    }

    #[test]
    fn local_kernel_with_a_modules_dir_without_modules_dep() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        std::fs::write(&image, fake_bzimage("9.1.0-test #1\0")).unwrap();
        let mods = dir.path().join("lib/modules/9.1.0-test");
        std::fs::create_dir_all(mods.join("kernel")).unwrap();
        std::fs::write(mods.join("kernel/virtio.ko"), fake_module("virtio", &[])).unwrap();
        let ring = fake_module("virtio_ring", &["virtio"]);
        std::fs::write(
            mods.join("kernel/virtio_ring.ko.zst"),
            zstd::stream::encode_all(&ring[..], 1).unwrap(),
        )
        .unwrap();
        let k = local(&image, Some(&mods), &["virtio_ring".into()]).unwrap();
        assert_eq!(k.release, "9.1.0-test");
        let names: Vec<_> = k.modules.iter().map(|m| m.file_name.as_str()).collect();
        assert_eq!(names, ["virtio.ko", "virtio_ring.ko"]);
        assert!(k
            .stamps
            .iter()
            .any(|s| s.path == mods.join("kernel/virtio_ring.ko.zst")));

        let k = local(&image, None, &["virtio_ring".into()]).unwrap();
        assert!(k.modules.is_empty());
        let err = local(&dir.path().join("missing"), None, &[]).unwrap_err();
        assert!(err.to_string().contains("--kernel"), "{err}");
        let err = local(&image, Some(&mods), &["vsock".into()]).unwrap_err();
        assert!(matches!(err, AssetsError::Modules { .. }), "{err}");
    }
}
