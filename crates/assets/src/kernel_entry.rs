//! A kernel entry of the cache: `kernels/<sha256 of the .deb>/`, holding
//! the kernel image, its config, the decompressed modules some request
//! needed, and `manifest.json` (the module table of the whole kernel plus a
//! SHA-256 of every kept file).
//!
//! An entry is built in a temporary directory and renamed into place, so a
//! half-extracted entry never exists under its final name.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::debian::DebPin;
use crate::error::{cache_err, AssetsError};
use crate::fsutil::{sha256_file, sha256_hex};
use crate::index::FORMAT_VERSION;
use crate::modules::{decompress, split_module_file, ModuleCompression, ModuleTable};
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

/// Where a module's bytes (as shipped) sit in the spill file.
#[derive(Debug, Clone, Copy)]
struct Spilled {
    offset: u64,
    len: usize,
    compression: ModuleCompression,
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
    let modules_dir = out.join(MODULES);
    std::fs::create_dir_all(&modules_dir).map_err(cache_err("create directory", &modules_dir))?;
    // Which modules are needed is known only once every module's
    // dependencies are: park each module's bytes in one spill file until then.
    let spill_path = out.join("modules.spill");
    let spill = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&spill_path)
        .map_err(cache_err("create", &spill_path))?;
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
    let mut state = ExtractState::new(BufWriter::with_capacity(1 << 20, spill));
    let walked = walk_tar(
        BufReader::with_capacity(
            1 << 20,
            ProgressRead {
                inner: stdout,
                bar: bar.clone(),
            },
        ),
        deb,
        out,
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
    let mut spill = state
        .spill
        .into_inner()
        .map_err(|e| cache_err("write", &spill_path)(e.into_error()))?;
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
        let mut raw = vec![0u8; spilled.len];
        spill
            .seek(SeekFrom::Start(spilled.offset))
            .and_then(|_| spill.read_exact(&mut raw))
            .map_err(cache_err("read back", &spill_path))?;
        let elf = decompress(&raw, spilled.compression).map_err(extract_err)?;
        kept.insert(name.clone(), keep(out, &file, &elf)?);
    }
    drop(spill);
    std::fs::remove_file(&spill_path).map_err(cache_err("remove", &spill_path))?;
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
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| cache_err("encode manifest", out.join(MANIFEST))(e.into()))?;
    nook_fsutil::write_atomic(&out.join(MANIFEST), 0o644, |f| f.write_all(&json))?;
    tracing::debug!(
        target: "nook::assets",
        release = %manifest.release,
        modules = manifest.table.modules.len(),
        kept = manifest.modules.len(),
        "kernel package extracted"
    );
    Ok(manifest)
}

struct ExtractState<W> {
    kernel: Option<(String, FileRecord)>,
    config: Option<FileRecord>,
    modules_dep: Option<String>,
    modules_builtin: Option<String>,
    modinfo_table: ModuleTable,
    /// Every module's bytes, back to back.
    spill: W,
    spill_len: u64,
    /// Relative module path (as in `lib/modules/RELEASE/`) → spilled bytes.
    spilled: BTreeMap<String, Spilled>,
}

impl<W: Write> ExtractState<W> {
    fn new(spill: W) -> Self {
        Self {
            kernel: None,
            config: None,
            modules_dep: None,
            modules_builtin: None,
            modinfo_table: ModuleTable::default(),
            spill,
            spill_len: 0,
            spilled: BTreeMap::new(),
        }
    }
}

fn walk_tar<R: Read, W: Write>(
    input: R,
    deb: &Path,
    out: &Path,
    state: &mut ExtractState<W>,
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
        let path = entry
            .path()
            .map_err(tar_err)?
            .to_string_lossy()
            .into_owned();
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
                state.spill.write_all(&raw).map_err(tar_err)?;
                state.spilled.insert(
                    rel.to_owned(),
                    Spilled {
                        offset: state.spill_len,
                        len: raw.len(),
                        compression,
                    },
                );
                state.spill_len += raw.len() as u64;
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

/// Writes `data` to `out/name` and records its hash.
fn keep(out: &Path, name: &str, data: &[u8]) -> Result<FileRecord, AssetsError> {
    let path = out.join(name);
    std::fs::write(&path, data).map_err(cache_err("write", &path))?;
    Ok(FileRecord {
        file: name.to_owned(),
        sha256: sha256_hex(data),
        size: data.len() as u64,
    })
}

/// Makes the finished entry `staged` (described by `manifest`) visible at
/// `dest`.
///
/// A new entry is one directory rename. An existing entry (same `.deb`, so
/// same contents for the same file name) is updated file by file: files
/// that already hash right stay untouched (their stamps in the fast-path
/// index stay valid), others are renamed over, and the manifest is renamed
/// last, so the entry never lists a file it does not have.
pub(crate) fn install(
    staged: &Path,
    dest: &Path,
    manifest: &KernelManifest,
) -> Result<(), AssetsError> {
    // Data must be on disk before a rename makes it visible.
    sync_tree(staged).map_err(cache_err("sync", staged))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(cache_err("create directory", parent))?;
    }
    if !dest.is_dir() {
        if dest.exists() {
            std::fs::remove_file(dest).map_err(cache_err("remove", dest))?;
        }
        return std::fs::rename(staged, dest).map_err(cache_err("rename into place", dest));
    }
    let mut records = vec![&manifest.kernel];
    records.extend(manifest.config.as_ref());
    records.extend(manifest.modules.values());
    for record in records {
        let have = dest.join(&record.file);
        if sha256_file(&have).is_ok_and(|(sha, size)| sha == record.sha256 && size == record.size) {
            continue;
        }
        if let Some(parent) = have.parent() {
            std::fs::create_dir_all(parent).map_err(cache_err("create directory", parent))?;
        }
        std::fs::rename(staged.join(&record.file), &have)
            .map_err(cache_err("rename into place", &have))?;
    }
    let target = dest.join(MANIFEST);
    std::fs::rename(staged.join(MANIFEST), &target)
        .map_err(cache_err("rename into place", &target))?;
    std::fs::remove_dir_all(staged).map_err(cache_err("remove", staged))
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
pub(crate) mod tests {
    use super::*;
    use crate::elf::tests::fake_module;
    use crate::index::FileStamp;

    pub(crate) fn pin() -> DebPin {
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
        add(
            "./lib/modules/9.9.9-test/modules.builtin",
            b"kernel/fs/ext4/ext4.ko\n",
        );
        add("./usr/share/doc/x/copyright", b"text");
        b.into_inner().unwrap()
    }

    #[test]
    fn walks_a_package_tar_and_keeps_only_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("entry");
        std::fs::create_dir_all(out.join(MODULES)).unwrap();
        let mut state = ExtractState::new(Vec::new());
        walk_tar(&fake_tar()[..], Path::new("x.deb"), &out, &mut state).unwrap();
        let (release, kernel) = state.kernel.clone().unwrap();
        assert_eq!(release, "9.9.9-test");
        assert_eq!(kernel.sha256, sha256_hex(b"KERNEL"));
        assert_eq!(std::fs::read(out.join(KERNEL)).unwrap(), b"KERNEL");
        assert!(state.config.is_some());
        assert_eq!(state.spilled.len(), 4);
        let mut table = state.modinfo_table.clone();
        table.add_builtin(state.modules_builtin.as_deref().unwrap());
        assert_eq!(
            table
                .load_order(&["virtio-rng".into(), "ext4".into()])
                .unwrap(),
            ["virtio", "virtio_ring", "virtio_rng"]
        );
        // The zstd module was parked as shipped and decompresses back.
        let ring = state.spilled["kernel/drivers/virtio/virtio_ring.ko.zst"];
        assert_eq!(ring.compression, ModuleCompression::Zstd);
        let raw = &state.spill[ring.offset as usize..ring.offset as usize + ring.len];
        assert_eq!(
            *decompress(raw, ring.compression).unwrap(),
            fake_module("virtio_ring", &["virtio"])
        );
        assert_eq!(state.spill_len, state.spill.len() as u64);
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
        std::fs::write(entry.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let loaded = KernelManifest::load(entry).unwrap();
        assert!(loaded.verify(entry, &["virtio".into()]));
        assert!(!loaded.verify(entry, &["vsock".into()]), "module not kept");
        std::fs::write(entry.join(KERNEL), b"KERN").unwrap();
        assert!(!loaded.verify(entry, &[]), "truncated kernel");
        std::fs::write(entry.join(MANIFEST), b"{").unwrap();
        assert!(KernelManifest::load(entry).is_none());
    }

    /// Writes a kernel entry with the given dependency-free modules.
    pub(crate) fn manifest_of(entry: &Path, modules: &[(&str, &[u8])]) -> KernelManifest {
        let mut kept = BTreeMap::new();
        let mut table = ModuleTable::default();
        std::fs::create_dir_all(entry.join(MODULES)).unwrap();
        for (name, data) in modules {
            let file = format!("{MODULES}/{name}.ko");
            kept.insert(name.to_string(), keep(entry, &file, data).unwrap());
            table.modules.insert(
                name.to_string(),
                crate::modules::ModuleInfo {
                    path: format!("kernel/{name}.ko"),
                    depends: vec![],
                },
            );
        }
        let manifest = KernelManifest {
            format: FORMAT_VERSION,
            package: pin().package,
            version: pin().version,
            deb_sha256: pin().sha256,
            release: "9.9.9-test".into(),
            kernel: keep(entry, KERNEL, b"KERNEL").unwrap(),
            config: None,
            table,
            modules: kept,
        };
        std::fs::write(entry.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        manifest
    }

    #[test]
    fn install_creates_or_extends_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("kernels/abc");
        let staged = dir.path().join("staged1");
        let first = manifest_of(&staged, &[("virtio", b"m1")]);
        install(&staged, &dest, &first).unwrap();
        assert!(!staged.exists());
        assert_eq!(KernelManifest::load(&dest), Some(first));
        let kernel_ino = FileStamp::of(&dest.join(KERNEL)).unwrap();

        // Extending with another module keeps the intact kernel file.
        let staged = dir.path().join("staged2");
        let second = manifest_of(&staged, &[("virtio", b"m1"), ("vsock", b"m2")]);
        install(&staged, &dest, &second).unwrap();
        assert!(!staged.exists());
        assert_eq!(KernelManifest::load(&dest), Some(second.clone()));
        assert!(second.verify(&dest, &["virtio".into(), "vsock".into()]));
        assert!(kernel_ino.is_current(), "kernel file untouched");

        // A damaged kernel is replaced.
        std::fs::write(dest.join(KERNEL), b"KERN").unwrap();
        let staged = dir.path().join("staged3");
        let third = manifest_of(&staged, &[("virtio", b"m1")]);
        install(&staged, &dest, &third).unwrap();
        assert!(third.verify(&dest, &["virtio".into()]));
    }
}
