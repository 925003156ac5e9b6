//! Kernel modules: names, compressed `.ko` files, the dependency table (from
//! `modules.dep` when depmod has run, else from each module's `.modinfo`),
//! and the load order of a wanted set (dependencies first).
//!
//! Module names treat `-` and `_` alike (`virtio-rng` is `virtio_rng`); the
//! table is keyed by the normalized (`_`) form.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::elf::{read_modinfo, ModinfoError};

/// The largest decompressed module we accept (a guard against bombs).
const MAX_MODULE_SIZE: u64 = 256 << 20;

/// Errors of module discovery and dependency resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A wanted module (or a dependency of one) is neither a module file nor
    /// built into the kernel.
    #[error(
        "kernel module {name} (wanted by {wanted_by}) is not in this kernel: \
         drop it from the module list or use a kernel that ships it"
    )]
    NotFound {
        /// The missing module.
        name: String,
        /// The module that depends on it, or "the module list".
        wanted_by: String,
    },
    /// Modules depend on each other in a loop.
    #[error("kernel modules depend on each other in a cycle through {name}: the module metadata is corrupt")]
    Cycle {
        /// A module on the cycle.
        name: String,
    },
    /// A directory of modules could not be listed.
    #[error("cannot list kernel modules in {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A module or metadata file could not be read.
    #[error("cannot read kernel module file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress kernel module {path}: the file is corrupt or not a module")]
    Decompress {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A module's `.modinfo` could not be read.
    #[error("cannot read .modinfo of kernel module {path}")]
    Modinfo {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ModinfoError,
    },
}

/// How a module file is compressed, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleCompression {
    /// Plain `.ko`.
    None,
    /// `.ko.xz`.
    Xz,
    /// `.ko.zst`.
    Zstd,
    /// `.ko.gz`.
    Gzip,
}

/// `-` and `_` are the same in module names; the table uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Splits a module file name into its stem and compression:
/// `virtio-rng.ko.xz` → (`virtio-rng`, Xz). `None` if it is not a module.
pub fn split_module_file(file_name: &str) -> Option<(&str, ModuleCompression)> {
    for (suffix, c) in [
        (".ko", ModuleCompression::None),
        (".ko.xz", ModuleCompression::Xz),
        (".ko.zst", ModuleCompression::Zstd),
        (".ko.gz", ModuleCompression::Gzip),
    ] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            if !stem.is_empty() {
                return Some((stem, c));
            }
        }
    }
    None
}

/// The last path component of a `/`-separated path.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Decompresses module bytes (any [`ModuleCompression`]) into a plain ELF image;
/// plain modules are returned as they are.
pub fn decompress(data: &[u8], compression: ModuleCompression) -> io::Result<Cow<'_, [u8]>> {
    if compression == ModuleCompression::None {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = LimitedWriter {
        buf: Vec::with_capacity(data.len().saturating_mul(3)),
    };
    match compression {
        ModuleCompression::None => {}
        ModuleCompression::Xz => {
            let mut input = data;
            lzma_rs::xz_decompress(&mut input, &mut out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
        ModuleCompression::Zstd => {
            io::copy(&mut zstd::stream::read::Decoder::new(data)?, &mut out)?;
        }
        ModuleCompression::Gzip => {
            io::copy(&mut flate2::read::GzDecoder::new(data), &mut out)?;
        }
    }
    Ok(Cow::Owned(out.buf))
}

struct LimitedWriter {
    buf: Vec<u8>,
}

impl Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > MAX_MODULE_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "decompressed module exceeds 256 MiB",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One module in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Path relative to `lib/modules/RELEASE`, as shipped (may be compressed).
    pub path: String,
    /// Normalized names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

impl ModuleInfo {
    /// The file name of the module once decompressed: `virtio-rng.ko`.
    pub fn plain_file_name(&self) -> String {
        let base = base_name(&self.path);
        match split_module_file(base) {
            Some((stem, _)) => format!("{stem}.ko"),
            None => base.to_owned(),
        }
    }
}

/// Every module of one kernel release and which are built in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleTable {
    /// Normalized name → module.
    pub modules: BTreeMap<String, ModuleInfo>,
    /// Normalized names of modules built into the kernel image.
    pub builtin: BTreeSet<String>,
}

impl ModuleTable {
    /// Parses depmod's `modules.dep`
    /// (`kernel/a/x.ko: kernel/b/y.ko kernel/c/z.ko`).
    pub fn from_modules_dep(text: &str) -> Self {
        let mut table = Self::default();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = name_of_path(module.trim()) else {
                continue;
            };
            let depends = deps.split_whitespace().filter_map(name_of_path).collect();
            table.modules.insert(
                name,
                ModuleInfo {
                    path: module.trim().to_owned(),
                    depends,
                },
            );
        }
        table
    }

    /// Adds the names listed in `modules.builtin` (one path per line).
    pub fn add_builtin(&mut self, text: &str) {
        self.builtin
            .extend(text.lines().filter_map(|l| name_of_path(l.trim())));
    }

    /// Records one module from its (decompressed) ELF bytes.
    pub fn add_from_elf(&mut self, rel_path: &str, elf: &[u8]) -> Result<(), ModinfoError> {
        let info = read_modinfo(elf)?;
        let name = match (info.name, name_of_path(rel_path)) {
            (Some(n), _) => normalize(&n),
            (None, Some(n)) => n,
            (None, None) => return Err(ModinfoError::NoModinfo),
        };
        let depends = info.depends.iter().map(|d| normalize(d)).collect();
        self.modules.insert(
            name,
            ModuleInfo {
                path: rel_path.to_owned(),
                depends,
            },
        );
        Ok(())
    }

    /// Reads the table of an installed `lib/modules/RELEASE` directory:
    /// `modules.dep` if depmod has run, else the `.modinfo` of every module.
    pub fn from_dir(dir: &Path) -> Result<Self, ModuleError> {
        let read = |p: PathBuf| match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ModuleError::Read { path: p, source }),
        };
        let mut table = match read(dir.join("modules.dep"))? {
            Some(dep) => Self::from_modules_dep(&dep),
            None => {
                let mut table = Self::default();
                let mut files = Vec::new();
                walk_modules(dir, "", &mut files)?;
                for rel in files {
                    let path = dir.join(&rel);
                    let elf = read_module_file(&path)?;
                    table
                        .add_from_elf(&rel, &elf)
                        .map_err(|source| ModuleError::Modinfo { path, source })?;
                }
                table
            }
        };
        if let Some(builtin) = read(dir.join("modules.builtin"))? {
            table.add_builtin(&builtin);
        }
        Ok(table)
    }

    /// The modules to load for `wanted`, dependencies first, each once.
    /// Built-in modules are skipped; unknown ones are an error.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut state: BTreeMap<String, Visit> = BTreeMap::new();
        for name in wanted {
            self.visit(&normalize(name), "the module list", &mut state, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        wanted_by: &str,
        state: &mut BTreeMap<String, Visit>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        match state.get(name) {
            Some(Visit::Done) => return Ok(()),
            Some(Visit::InProgress) => {
                return Err(ModuleError::Cycle {
                    name: name.to_owned(),
                })
            }
            None => {}
        }
        let Some(info) = self.modules.get(name) else {
            if self.builtin.contains(name) {
                tracing::debug!(target: "nook::assets", module = name, "built into the kernel");
                state.insert(name.to_owned(), Visit::Done);
                return Ok(());
            }
            return Err(ModuleError::NotFound {
                name: name.to_owned(),
                wanted_by: wanted_by.to_owned(),
            });
        };
        state.insert(name.to_owned(), Visit::InProgress);
        for dep in &info.depends {
            self.visit(dep, name, state, order)?;
        }
        state.insert(name.to_owned(), Visit::Done);
        order.push(name.to_owned());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    InProgress,
    Done,
}

/// The normalized module name of a module path, if it is one.
pub fn name_of_path(path: &str) -> Option<String> {
    split_module_file(base_name(path)).map(|(stem, _)| normalize(stem))
}

/// Reads a module file and decompresses it by its suffix.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let data = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.to_owned(),
        source,
    })?;
    let compression = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(split_module_file)
        .map_or(ModuleCompression::None, |(_, c)| c);
    match decompress(&data, compression) {
        Ok(Cow::Borrowed(_)) => Ok(data),
        Ok(Cow::Owned(elf)) => Ok(elf),
        Err(source) => Err(ModuleError::Decompress {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Collects module files under `dir` (relative paths), not following
/// symlinks (`build` and `source` point into kernel headers).
fn walk_modules(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), ModuleError> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|source| ModuleError::ReadDir {
        path: dir.clone(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ModuleError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let file_type = entry.file_type().map_err(|source| ModuleError::ReadDir {
            path: entry.path(),
            source,
        })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        names.push((name, file_type));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, file_type) in names {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if file_type.is_dir() {
            walk_modules(root, &child, out)?;
        } else if file_type.is_file() && split_module_file(&name).is_some() {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::fake_module;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko.zst: kernel/drivers/char/hw_random/rng-core.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/rng-core.ko:
";

    #[test]
    fn load_order_from_modules_dep_puts_dependencies_first() {
        let table = ModuleTable::from_modules_dep(DEP);
        let order = table
            .load_order(&names(&["virtio_mmio", "virtio-console"]))
            .unwrap();
        assert_eq!(
            order,
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_console"]
        );
        let order = table.load_order(&names(&["virtio_rng"])).unwrap();
        assert_eq!(order, ["rng_core", "virtio_ring", "virtio_rng"]);
        assert_eq!(
            table.modules["virtio_rng"].plain_file_name(),
            "virtio-rng.ko"
        );
        assert_eq!(
            table.modules["virtio_console"].path,
            "kernel/drivers/char/virtio_console.ko.xz"
        );
    }

    #[test]
    fn load_order_from_modinfo() {
        let mut table = ModuleTable::default();
        for (path, name, deps) in [
            (
                "kernel/virtio_mmio.ko",
                "virtio_mmio",
                &["virtio", "virtio_ring"][..],
            ),
            ("kernel/virtio_ring.ko", "virtio_ring", &["virtio"][..]),
            ("kernel/virtio.ko", "virtio", &[][..]),
            ("kernel/vsock.ko", "vsock", &[][..]),
            (
                "kernel/vmw_vsock_virtio_transport.ko",
                "vmw_vsock_virtio_transport",
                &[
                    "vmw_vsock_virtio_transport_common",
                    "vsock",
                    "virtio",
                    "virtio_ring",
                ][..],
            ),
            (
                "kernel/vmw_vsock_virtio_transport_common.ko",
                "vmw_vsock_virtio_transport_common",
                &["vsock"][..],
            ),
        ] {
            table.add_from_elf(path, &fake_module(name, deps)).unwrap();
        }
        let order = table
            .load_order(&names(&["vmw_vsock_virtio_transport", "virtio_mmio"]))
            .unwrap();
        assert_eq!(
            order,
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "virtio",
                "virtio_ring",
                "vmw_vsock_virtio_transport",
                "virtio_mmio"
            ]
        );
        // Each module appears after all its dependencies.
        for (i, m) in order.iter().enumerate() {
            for d in &table.modules[m].depends {
                assert!(order[..i].contains(d), "{d} before {m}");
            }
        }
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_are_errors() {
        let mut table = ModuleTable::from_modules_dep(
            "kernel/fs/overlayfs/overlay.ko: kernel/fs/ext4/ext4.ko\n",
        );
        table.add_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio.ko\n");
        assert_eq!(
            table.load_order(&names(&["overlay", "virtio"])).unwrap(),
            ["overlay"]
        );
        let err = table.load_order(&names(&["squashfs"])).unwrap_err();
        assert!(matches!(err, ModuleError::NotFound { ref name, .. } if name == "squashfs"));
        assert!(err.to_string().contains("drop it from the module list"));
        let table = ModuleTable::from_modules_dep("kernel/a.ko: kernel/b.ko\n");
        let err = table.load_order(&names(&["a"])).unwrap_err();
        assert!(
            matches!(err, ModuleError::NotFound { ref name, ref wanted_by } if name == "b" && wanted_by == "a")
        );
    }

    #[test]
    fn cycles_are_reported() {
        let table =
            ModuleTable::from_modules_dep("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n");
        assert!(matches!(
            table.load_order(&names(&["a"])),
            Err(ModuleError::Cycle { .. })
        ));
    }

    #[test]
    fn split_and_normalize_names() {
        assert_eq!(
            split_module_file("virtio-rng.ko.xz"),
            Some(("virtio-rng", ModuleCompression::Xz))
        );
        assert_eq!(
            split_module_file("a.ko.zst"),
            Some(("a", ModuleCompression::Zstd))
        );
        assert_eq!(
            split_module_file("a.ko.gz"),
            Some(("a", ModuleCompression::Gzip))
        );
        assert_eq!(split_module_file("modules.dep"), None);
        assert_eq!(split_module_file(".ko"), None);
        assert_eq!(
            name_of_path("kernel/x/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
    }

    #[test]
    fn compressed_modules_round_trip() {
        let elf = fake_module("virtio", &[]);
        let zst = zstd::stream::encode_all(&elf[..], 3).unwrap();
        assert_eq!(*decompress(&zst, ModuleCompression::Zstd).unwrap(), elf);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut xz).unwrap();
        assert_eq!(*decompress(&xz, ModuleCompression::Xz).unwrap(), elf);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(*decompress(&gz, ModuleCompression::Gzip).unwrap(), elf);
        assert!(matches!(
            decompress(&elf, ModuleCompression::None),
            Ok(Cow::Borrowed(_))
        ));
        assert!(decompress(b"not xz", ModuleCompression::Xz).is_err());
    }

    #[test]
    fn from_dir_without_modules_dep_reads_modinfo_of_compressed_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("kernel/drivers/virtio");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("virtio.ko"), fake_module("virtio", &[])).unwrap();
        let ring = fake_module("virtio_ring", &["virtio"]);
        std::fs::write(
            sub.join("virtio_ring.ko.zst"),
            zstd::stream::encode_all(&ring[..], 3).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let table = ModuleTable::from_dir(dir.path()).unwrap();
        assert_eq!(
            table.load_order(&names(&["virtio_ring", "ext4"])).unwrap(),
            ["virtio", "virtio_ring"]
        );
        assert_eq!(
            table.modules["virtio_ring"].path,
            "kernel/drivers/virtio/virtio_ring.ko.zst"
        );
        assert_eq!(
            read_module_file(&sub.join("virtio_ring.ko.zst")).unwrap(),
            ring
        );
        // With modules.dep present, it wins.
        std::fs::write(dir.path().join("modules.dep"), "kernel/other.ko:\n").unwrap();
        let table = ModuleTable::from_dir(dir.path()).unwrap();
        assert_eq!(table.modules.keys().collect::<Vec<_>>(), ["other"]);
    }
}
