//! A kernel entry of the cache: `kernels/<sha256 of the .deb>/`, holding
//! the kernel image, its config, the decompressed modules some request
//! needed, and `manifest.json` (the module table of the whole kernel plus a
//! SHA-256 of every kept file).
//!
//! An entry is built in a temporary directory and renamed into place, so a
//! half-extracted entry never exists under its final name.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::debian::DebPin;
use crate::error::{cache_err, AssetsError};
use crate::fsutil::{sha256_file, sha256_hex, write_atomic};
use crate::index::FORMAT_VERSION;
use crate::modules::{decompress, split_module_file, ModuleTable};
use crate::progress::{Progress, ProgressRead};

/// The manifest's file name inside an entry.
pub(crate) const MANIFEST: &str = "manifest.json";
/// The kernel image inside an entry.
const KERNEL: &str = "vmlinuz";
/// The kernel config inside an entry.
const CONFIG: &str = "config";
/// Decompressed modules inside an entry.
const MODULES: &str = "modules";
/// The largest single file we take from a package.
const MAX_FILE: u64 = 512 << 20;

/// A kept file and its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// Path relative to the entry.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// `manifest.json` of a kernel entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KernelManifest {
    pub format: u32,
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
    pub release: String,
    pub kernel: FileRecord,
    pub config: Option<FileRecord>,
    /// Every module of the kernel, so any module set can be resolved.
    pub table: ModuleTable,
    /// The modules kept in this entry, by normalized name.
    pub modules: BTreeMap<String, FileRecord>,
}

impl KernelManifest {
    /// Reads an entry's manifest; `None` if absent, unreadable or of
    /// another format.
    pub fn load(entry: &Path) -> Option<Self> {
        let bytes = std::fs::read(entry.join(MANIFEST)).ok()?;
        serde_json::from_slice::<Self>(&bytes)
            .ok()
            .filter(|m| m.format == FORMAT_VERSION)
    }

    /// Whether the kernel, its config and the named modules are all present
    /// and hash to what the manifest recorded.
    pub fn verify(&self, entry: &Path, modules: &[String]) -> bool {
        let mut records: Vec<&FileRecord> = vec![&self.kernel];
        records.extend(self.config.as_ref());
        for name in modules {
            match self.modules.get(name) {
                Some(r) => records.push(r),
                None => return false,
            }
        }
        records.into_iter().all(|r| {
            let ok = sha256_file(&entry.join(&r.file))
                .is_ok_and(|(sha, size)| sha == r.sha256 && size == r.size);
            if !ok {
                tracing::warn!(target: "nook::assets", file = %entry.join(&r.file).display(), "cached kernel file is damaged");
            }
            ok
        })
    }

    /// Path of the kept file of module `name`.
    pub fn module_path(&self, entry: &Path, name: &str) -> Option<PathBuf> {
        self.modules.get(name).map(|r| entry.join(&r.file))
    }

    pub fn kernel_path(&self, entry: &Path) -> PathBuf {
        entry.join(&self.kernel.file)
    }

    pub fn config_path(&self, entry: &Path) -> Option<PathBuf> {
        self.config.as_ref().map(|r| entry.join(&r.file))
    }
}

/// A module file spilled to disk during extraction.
struct Spilled {
    path: PathBuf,
    sha256: String,
    size: u64,
}

/// Unpacks `deb` into the new entry directory `out`, keeping the kernel,
/// its config and the modules `wanted` needs (with dependencies).
pub(crate) fn extract_deb(
    deb: &Path,
    pin: &DebPin,
    out: &Path,
    wanted: &[String],
    progress: &Progress,
) -> Result<KernelManifest, AssetsError> {
    let extract_err = |source: io::Error| AssetsError::Extract {
        deb: deb.to_owned(),
        source,
    };
    let spill_dir = out.join("all");
    for dir in [out.join(MODULES), spill_dir.clone()] {
        std::fs::create_dir_all(&dir).map_err(cache_err("create directory", &dir))?;
    }
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| AssetsError::AptMissing {
            tool: "dpkg-deb",
            source,
        })?;
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::Builder::new()
        .name("nook-dpkg-stderr".into())
        .spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                let _ = s.read_to_string(&mut text);
            }
            text
        })
        .map_err(extract_err)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| extract_err(io::Error::other("dpkg-deb has no stdout")))?;
    let bar = progress.bar(pin.installed_size, "extracting kernel");
    let mut state = ExtractState::default();
    let walked = walk_tar(
        ProgressRead {
            inner: stdout,
            bar: bar.clone(),
        },
        deb,
        out,
        &spill_dir,
        &mut state,
    );
    bar.finish_and_clear();
    // Reap dpkg-deb even when the walk failed (it may block on a full pipe
    // otherwise: dropping our end of the pipe above unblocks it).
    let status = child.wait().map_err(extract_err)?;
    let stderr = stderr_reader.join().unwrap_or_default();
    walked?;
    if !status.success() {
        return Err(extract_err(io::Error::other(format!(
            "dpkg-deb --fsys-tarfile exited with {status}: {}",
            stderr.trim()
        ))));
    }
    let (release, kernel) = state.kernel.ok_or_else(|| AssetsError::NotAKernelPackage {
        deb: deb.to_owned(),
        missing: "boot/vmlinuz-*",
    })?;
    let mut table = match &state.modules_dep {
        Some(dep) => ModuleTable::from_modules_dep(dep),
        None => state.modinfo_table,
    };
    if let Some(builtin) = &state.modules_builtin {
        table.add_builtin(builtin);
    }
    let order = table
        .load_order(wanted)
        .map_err(|source| AssetsError::Modules {
            release: release.clone(),
            source,
        })?;
    let mut kept = BTreeMap::new();
    for name in &order {
        let Some(info) = table.modules.get(name) else {
            continue;
        };
        let Some(spilled) = state.spilled.get(&info.path) else {
            return Err(AssetsError::NotAKernelPackage {
                deb: deb.to_owned(),
                missing: "a module listed in its modules.dep",
            });
        };
        let file = format!("{MODULES}/{}", info.plain_file_name());
        let dest = out.join(&file);
        std::fs::rename(&spilled.path, &dest).map_err(cache_err("move module to", &dest))?;
        kept.insert(
            name.clone(),
            FileRecord {
                file,
                sha256: spilled.sha256.clone(),
                size: spilled.size,
            },
        );
    }
    std::fs::remove_dir_all(&spill_dir).map_err(cache_err("remove", &spill_dir))?;
    let manifest = KernelManifest {
        format: FORMAT_VERSION,
        package: pin.package.clone(),
        version: pin.version.clone(),
        deb_sha256: pin.sha256.clone(),
        release,
        kernel,
        config: state.config,
        table,
        modules: kept,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| AssetsError::Cache {
        op: "encode manifest",
        path: out.join(MANIFEST),
        source: e.into(),
    })?;
    write_atomic(&out.join(MANIFEST), &json).map_err(cache_err("write", out.join(MANIFEST)))?;
    tracing::debug!(
        target: "nook::assets",
        release = %manifest.release,
        modules = manifest.table.modules.len(),
        kept = manifest.modules.len(),
        "kernel package extracted"
    );
    Ok(manifest)
}

#[derive(Default)]
struct ExtractState {
    kernel: Option<(String, FileRecord)>,
    config: Option<FileRecord>,
    modules_dep: Option<String>,
    modules_builtin: Option<String>,
    modinfo_table: ModuleTable,
    /// Relative module path (as in `lib/modules/RELEASE/`) → spilled file.
    spilled: BTreeMap<String, Spilled>,
}

fn walk_tar<R: Read>(
    input: R,
    deb: &Path,
    out: &Path,
    spill_dir: &Path,
    state: &mut ExtractState,
) -> Result<(), AssetsError> {
    let tar_err = |source: io::Error| AssetsError::Extract {
        deb: deb.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(tar_err)?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        if let Some(release) = path.strip_prefix("boot/vmlinuz-") {
            let data = read_entry(&mut entry, path).map_err(tar_err)?;
            let record = keep(out, KERNEL, &data)?;
            state.kernel = Some((release.to_owned(), record));
            continue;
        }
        if path.starts_with("boot/config-") {
            let data = read_entry(&mut entry, path).map_err(tar_err)?;
            state.config = Some(keep(out, CONFIG, &data)?);
            continue;
        }
        // Merged-/usr packages ship usr/lib/modules.
        let path = path.strip_prefix("usr/").unwrap_or(path);
        let Some(rest) = path.strip_prefix("lib/modules/") else {
            continue;
        };
        let Some((_release, rel)) = rest.split_once('/') else {
            continue;
        };
        match rel {
            "modules.dep" => {
                let data = read_entry(&mut entry, path).map_err(tar_err)?;
                state.modules_dep = Some(String::from_utf8_lossy(&data).into_owned());
            }
            "modules.builtin" => {
                let data = read_entry(&mut entry, path).map_err(tar_err)?;
                state.modules_builtin = Some(String::from_utf8_lossy(&data).into_owned());
            }
            _ => {
                let base = rel.rsplit('/').next().unwrap_or(rel);
                let Some((_, compression)) = split_module_file(base) else {
                    continue;
                };
                let raw = read_entry(&mut entry, path).map_err(tar_err)?;
                let elf = decompress(&raw, compression).map_err(tar_err)?;
                if let Err(e) = state.modinfo_table.add_from_elf(rel, &elf) {
                    tracing::warn!(target: "nook::assets", module = rel, error = %e, "skipping unreadable module");
                    continue;
                }
                let spill = spill_dir.join(format!("{}.ko", state.spilled.len()));
                std::fs::write(&spill, &elf).map_err(cache_err("write", &spill))?;
                state.spilled.insert(
                    rel.to_owned(),
                    Spilled {
                        path: spill,
                        sha256: sha256_hex(&elf),
                        size: elf.len() as u64,
                    },
                );
            }
        }
    }
    Ok(())
}

fn read_entry<R: Read>(entry: &mut R, path: &str) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    entry.take(MAX_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_FILE {
        return Err(io::Error::other(format!("{path} is larger than 512 MiB")));
    }
    Ok(data)
}

fn keep(out: &Path, name: &str, data: &[u8]) -> Result<FileRecord, AssetsError> {
    let path = out.join(name);
    std::fs::write(&path, data).map_err(cache_err("write", &path))?;
    Ok(FileRecord {
        file: name.to_owned(),
        sha256: sha256_hex(data),
        size: data.len() as u64,
    })
}

/// Moves the finished entry `staged` to `dest`, replacing an older entry
/// (kept in `trash_dir` only between the two renames).
pub(crate) fn install(staged: &Path, dest: &Path, trash_dir: &Path) -> Result<(), AssetsError> {
    // Data must be on disk before the rename makes the entry visible.
    sync_tree(staged).map_err(cache_err("sync", staged))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(cache_err("create directory", parent))?;
    }
    if dest.exists() {
        let trash = tempfile::Builder::new()
            .prefix("old-entry-")
            .tempdir_in(trash_dir)
            .map_err(cache_err("create temporary directory in", trash_dir))?;
        let old = trash.path().join("entry");
        std::fs::rename(dest, &old).map_err(cache_err("move aside", dest))?;
        std::fs::rename(staged, dest).map_err(cache_err("rename into place", dest))?;
        drop(trash);
    } else {
        std::fs::rename(staged, dest).map_err(cache_err("rename into place", dest))?;
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::fake_module;

    fn pin() -> DebPin {
        DebPin {
            requested: "linux-image-test".into(),
            package: "linux-image-9.9.9-test".into(),
            version: "9.9.9-1".into(),
            sha256: "00".repeat(32),
            size: 0,
            installed_size: 0,
        }
    }

    /// A tar like a kernel package's data.tar (no modules.dep).
    fn fake_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("./boot/vmlinuz-9.9.9-test", b"KERNEL");
        add("./boot/config-9.9.9-test", b"CONFIG_VIRTIO=y\n");
        let ring = fake_module("virtio_ring", &["virtio"]);
        add(
            "./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio_ring.ko.zst",
            &zstd::stream::encode_all(&ring[..], 1).unwrap(),
        );
        add(
            "./lib/modules/9.9.9-test/kernel/drivers/virtio/virtio.ko",
            &fake_module("virtio", &[]),
        );
        add(
            "./usr/lib/modules/9.9.9-test/kernel/drivers/char/hw_random/virtio-rng.ko",
            &fake_module("virtio-rng", &["virtio_ring", "virtio"]),
        );
        add(
            "./lib/modules/9.9.9-test/kernel/fs/unrelated.ko",
            &fake_module("unrelated", &[]),
        );
        add("./lib/modules/9.9.9-test/modules.builtin", b"kernel/fs/ext4/ext4.ko\n");
        add("./usr/share/doc/x/copyright", b"text");
        b.into_inner().unwrap()
    }

    #[test]
    fn walks_a_package_tar_and_keeps_only_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("entry");
        let spill = out.join("all");
        std::fs::create_dir_all(out.join(MODULES)).unwrap();
        std::fs::create_dir_all(&spill).unwrap();
        let mut state = ExtractState::default();
        walk_tar(&fake_tar()[..], Path::new("x.deb"), &out, &spill, &mut state).unwrap();
        let (release, kernel) = state.kernel.clone().unwrap();
        assert_eq!(release, "9.9.9-test");
        assert_eq!(kernel.sha256, sha256_hex(b"KERNEL"));
        assert_eq!(std::fs::read(out.join(KERNEL)).unwrap(), b"KERNEL");
        assert!(state.config.is_some());
        assert_eq!(state.spilled.len(), 4);
        let mut table = state.modinfo_table.clone();
        table.add_builtin(state.modules_builtin.as_deref().unwrap());
        assert_eq!(
            table.load_order(&["virtio-rng".into(), "ext4".into()]).unwrap(),
            ["virtio", "virtio_ring", "virtio_rng"]
        );
        // The zstd module was stored decompressed.
        let ring = &state.spilled["kernel/drivers/virtio/virtio_ring.ko.zst"];
        assert_eq!(
            std::fs::read(&ring.path).unwrap(),
            fake_module("virtio_ring", &["virtio"])
        );
    }

    #[test]
    fn manifest_verification_catches_damage() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path();
        let record = keep(entry, KERNEL, b"KERNEL").unwrap();
        let module = keep(entry, "virtio.ko", b"MOD").unwrap();
        let manifest = KernelManifest {
            format: FORMAT_VERSION,
            package: pin().package,
            version: pin().version,
            deb_sha256: pin().sha256,
            release: "9.9.9-test".into(),
            kernel: record,
            config: None,
            table: ModuleTable::default(),
            modules: [("virtio".to_owned(), module)].into(),
        };
        write_atomic(
            &entry.join(MANIFEST),
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let loaded = KernelManifest::load(entry).unwrap();
        assert!(loaded.verify(entry, &["virtio".into()]));
        assert!(!loaded.verify(entry, &["vsock".into()]), "module not kept");
        std::fs::write(entry.join(KERNEL), b"KERN").unwrap();
        assert!(!loaded.verify(entry, &[]), "truncated kernel");
        std::fs::write(entry.join(MANIFEST), b"{").unwrap();
        assert!(KernelManifest::load(entry).is_none());
    }

    #[test]
    fn install_replaces_an_old_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, dest, trash) = (
            dir.path().join("staged"),
            dir.path().join("kernels/abc"),
            dir.path().join("tmp"),
        );
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("old"), b"1").unwrap();
        std::fs::create_dir_all(staged.join("sub")).unwrap();
        std::fs::write(staged.join("sub/new"), b"2").unwrap();
        install(&staged, &dest, &trash).unwrap();
        assert!(dest.join("sub/new").exists());
        assert!(!dest.join("old").exists());
        assert!(!staged.exists());
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0, "trash removed");
    }
}
