//! The guest's initramfs: what goes in it ([`InitramfsSpec`]), its content
//! address, and writing it once into the cache.
//!
//! Contents (all root-owned, mtime 0, so equal inputs give equal bytes):
//!
//! ```text
//! /init                         the nook agent (0755)
//! /bin/busybox                  static busybox (0755)
//! /bin/sh, /usr/bin/..., ...    symlinks -> /bin/busybox, one per applet
//! /lib/modules/RELEASE/*.ko     decompressed kernel modules
//! /etc/nook/modules             their paths, one a line, in load order
//! /etc/passwd, /etc/group       root
//! /dev/console                  char 5:1, so PID 1 gets stdio
//! /proc /sys /dev /tmp /run /mnt /root /etc /var/tmp
//! ```
//!
//! The archive is left uncompressed: the kernel unpacks it fastest that way
//! and the guest memory it occupies is freed after unpacking anyway.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cpio::{CpioError, CpioWriter};
use crate::error::{cache_err, AssetsError};
use crate::fsutil::{sha256_file, HashSink};
use crate::index::FORMAT_VERSION;
use crate::progress::ProgressWrite;

/// Where the guest agent finds the module list.
pub const MODULES_MANIFEST: &str = "etc/nook/modules";

/// One node of the guest's initial filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir { perm: u32 },
    File { perm: u32, data: Arc<Vec<u8>> },
    Symlink { target: String },
    CharDev { perm: u32, major: u32, minor: u32 },
}

/// What goes into the initramfs, besides the fixed skeleton.
#[derive(Debug, Clone)]
pub(crate) struct InitramfsInputs {
    pub agent: Arc<Vec<u8>>,
    pub busybox: Arc<Vec<u8>>,
    /// Applet paths from `busybox --list-full` (`bin/sh`, `usr/bin/env`).
    pub applets: Vec<String>,
    pub release: String,
    /// (file name, decompressed ELF) in load order.
    pub modules: Vec<(String, Arc<Vec<u8>>)>,
}

/// The complete, ordered list of archive entries.
#[derive(Debug, Clone)]
pub(crate) struct InitramfsSpec {
    /// Path (relative, no leading `/`) → node. Directories are emitted
    /// first, in sorted order, so parents always precede children.
    nodes: BTreeMap<String, Node>,
}

const SKELETON_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("etc/nook", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
];

impl InitramfsSpec {
    /// Lays out the guest filesystem.
    pub fn new(inputs: &InitramfsInputs) -> Self {
        let mut nodes = BTreeMap::new();
        let file = |perm, data: Vec<u8>| Node::File {
            perm,
            data: Arc::new(data),
        };
        for (dir, perm) in SKELETON_DIRS {
            nodes.insert((*dir).to_owned(), Node::Dir { perm: *perm });
        }
        nodes.insert(
            "init".to_owned(),
            Node::File {
                perm: 0o755,
                data: inputs.agent.clone(),
            },
        );
        nodes.insert(
            "bin/busybox".to_owned(),
            Node::File {
                perm: 0o755,
                data: inputs.busybox.clone(),
            },
        );
        nodes.insert(
            "dev/console".to_owned(),
            Node::CharDev {
                perm: 0o600,
                major: 5,
                minor: 1,
            },
        );
        nodes.insert(
            "etc/passwd".to_owned(),
            file(0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        );
        nodes.insert("etc/group".to_owned(), file(0o644, b"root:x:0:\n".to_vec()));
        let module_dir = format!("lib/modules/{}", inputs.release);
        nodes.insert(module_dir.clone(), Node::Dir { perm: 0o755 });
        let mut manifest = String::new();
        for (name, data) in &inputs.modules {
            let path = format!("{module_dir}/{name}");
            manifest.push_str(&format!("/{path}\n"));
            nodes.insert(
                path,
                Node::File {
                    perm: 0o644,
                    data: data.clone(),
                },
            );
        }
        nodes.insert(
            MODULES_MANIFEST.to_owned(),
            file(0o644, manifest.into_bytes()),
        );
        for applet in &inputs.applets {
            // Applets never replace a real file (`/init`, `/bin/busybox`).
            if nodes.contains_key(applet) {
                continue;
            }
            let mut parent = applet.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                nodes
                    .entry(p.to_owned())
                    .or_insert(Node::Dir { perm: 0o755 });
                parent = p;
            }
            nodes.insert(
                applet.clone(),
                Node::Symlink {
                    target: "/bin/busybox".to_owned(),
                },
            );
        }
        Self { nodes }
    }

    /// Entries in archive order: directories (sorted, so parents first),
    /// then everything else (sorted).
    fn ordered(&self) -> impl Iterator<Item = (&String, &Node)> {
        let dirs = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { .. }));
        let rest = self
            .nodes
            .iter()
            .filter(|(_, n)| !matches!(n, Node::Dir { .. }));
        dirs.chain(rest)
    }

    /// Content address of the initramfs: SHA-256 over the format version
    /// and every entry (path, kind, mode, contents).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("nook-initramfs-v{FORMAT_VERSION}\n"));
        for (path, node) in self.ordered() {
            let (kind, perm, payload): (&str, u32, &[u8]) = match node {
                Node::Dir { perm } => ("d", *perm, b""),
                Node::File { perm, data } => ("f", *perm, data),
                Node::Symlink { target } => ("l", 0o777, target.as_bytes()),
                Node::CharDev { perm, .. } => ("c", *perm, b""),
            };
            let dev = match node {
                Node::CharDev { major, minor, .. } => format!("{major}:{minor}"),
                _ => String::new(),
            };
            h.update(format!(
                "{kind} {perm:o} {dev} {} {}\n",
                path.len(),
                payload.len()
            ));
            h.update(path.as_bytes());
            h.update(payload);
        }
        hex::encode(h.finalize())
    }

    /// Streams the archive into `out`.
    pub fn write<W: Write>(&self, out: W) -> Result<W, CpioError> {
        let mut w = CpioWriter::new(out);
        for (path, node) in self.ordered() {
            match node {
                Node::Dir { perm } => w.dir(path, *perm)?,
                Node::File { perm, data } => w.file(path, *perm, data)?,
                Node::Symlink { target } => w.symlink(path, target)?,
                Node::CharDev { perm, major, minor } => w.char_dev(path, *perm, *major, *minor)?,
            }
        }
        w.finish()
    }

    /// Total size of the file contents, for progress bars.
    pub fn payload_len(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

/// Applet paths of a busybox binary, from `busybox --list-full`. Lines that
/// are not plain relative paths are skipped.
pub(crate) fn busybox_applets(busybox: &Path) -> Result<Vec<String>, AssetsError> {
    let err = |source| AssetsError::Busybox {
        path: busybox.to_owned(),
        source,
    };
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(err(std::io::Error::other(format!(
            "exited with {}",
            out.status
        ))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let applets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| is_plain_relative(l))
        .map(str::to_owned)
        .collect();
    if applets.is_empty() {
        return Err(err(std::io::Error::other("it listed no applets")));
    }
    Ok(applets)
}

fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Returns `initramfs/<digest>.cpio`, writing it unless an intact copy is
/// there already. The bool says whether it was written.
pub(crate) fn ensure(
    spec: &InitramfsSpec,
    dir: &Path,
    progress: &crate::progress::Progress,
) -> Result<(PathBuf, bool), AssetsError> {
    let path = dir.join(format!("{}.cpio", spec.digest()));
    let write_err = |source| AssetsError::Initramfs {
        path: path.clone(),
        source,
    };
    if path.exists() {
        // Equal inputs give equal bytes: hash what we would write and
        // compare with what is there, so a damaged file is rewritten.
        let (want, _) = spec.write(HashSink::default()).map_err(write_err)?.finish();
        match sha256_file(&path) {
            Ok((have, _)) if have == want => {
                tracing::debug!(target: "nook::assets", path = %path.display(), "initramfs reused");
                return Ok((path, false));
            }
            _ => {
                tracing::warn!(target: "nook::assets", path = %path.display(), "cached initramfs is damaged; rebuilding");
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(cache_err("create directory", dir))?;
    let bar = progress.bar(spec.payload_len(), "building initramfs");
    // The image is not secret, and a VMM running as another user may need
    // to read it: 0644.
    let mut failed = None;
    let written = nook_fsutil::write_atomic(&path, 0o644, |file| {
        let inner = ProgressWrite {
            inner: file,
            bar: bar.clone(),
        };
        match spec.write(BufWriter::with_capacity(1 << 20, inner)) {
            Ok(out) => out.into_inner().map(drop).map_err(|e| e.into_error()),
            Err(e) => {
                failed = Some(e);
                Err(std::io::Error::other("the initramfs could not be built"))
            }
        }
    });
    if let Some(e) = failed {
        return Err(write_err(e));
    }
    written?;
    bar.finish_and_clear();
    tracing::debug!(target: "nook::assets", path = %path.display(), "initramfs built");
    Ok((path, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::read_newc;
    use crate::cpio::{S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

    fn inputs() -> InitramfsInputs {
        InitramfsInputs {
            agent: Arc::new(b"AGENT".to_vec()),
            busybox: Arc::new(b"BUSYBOX".to_vec()),
            applets: [
                "bin/sh",
                "usr/bin/sha256sum",
                "linuxrc",
                "sbin/init",
                "bin/busybox",
                "../evil",
            ]
            .iter()
            .map(|s| s.to_string())
            .filter(|s| is_plain_relative(s))
            .collect(),
            release: "6.1.0-test".into(),
            modules: vec![
                ("virtio.ko".into(), Arc::new(b"m1".to_vec())),
                ("virtio_ring.ko".into(), Arc::new(b"m2".to_vec())),
            ],
        }
    }

    #[test]
    fn archive_has_the_guest_layout() {
        let spec = InitramfsSpec::new(&inputs());
        let buf = spec.write(Vec::new()).unwrap();
        let entries = read_newc(&buf);
        let get = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(get("init").mode, S_IFREG | 0o755);
        assert_eq!(get("init").data, b"AGENT");
        assert_eq!(get("bin/busybox").data, b"BUSYBOX");
        assert_eq!(get("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").data, b"/bin/busybox");
        assert_eq!(get("usr/bin/sha256sum").data, b"/bin/busybox");
        assert_eq!(get("linuxrc").data, b"/bin/busybox");
        assert_eq!(get("tmp").mode, S_IFDIR | 0o1777);
        assert_eq!(get("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("lib/modules/6.1.0-test/virtio.ko").data, b"m1");
        assert_eq!(
            get(MODULES_MANIFEST).data,
            b"/lib/modules/6.1.0-test/virtio.ko\n/lib/modules/6.1.0-test/virtio_ring.ko\n"
        );
        assert!(String::from_utf8_lossy(&get("etc/passwd").data).starts_with("root:x:0:0:"));
        for d in [
            "proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc", "var/tmp",
        ] {
            assert_eq!(get(d).mode & S_IFDIR, S_IFDIR, "{d}");
        }
        // Every entry's parent directory comes before it.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                assert!(
                    entries[..i].iter().any(|p| p.name == parent),
                    "{} before its parent",
                    e.name
                );
            }
        }
        // `bin/busybox` from the applet list did not become a symlink.
        assert_eq!(
            entries.iter().filter(|e| e.name == "bin/busybox").count(),
            1
        );
        assert!(!entries.iter().any(|e| e.name.contains("..")));
    }

    #[test]
    fn digest_tracks_contents_and_output_is_reproducible() {
        let a = InitramfsSpec::new(&inputs());
        let b = InitramfsSpec::new(&inputs());
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.write(Vec::new()).unwrap(), b.write(Vec::new()).unwrap());
        let mut changed = inputs();
        changed.agent = Arc::new(b"AGENT2".to_vec());
        assert_ne!(a.digest(), InitramfsSpec::new(&changed).digest());
        let mut changed = inputs();
        changed.modules.reverse();
        assert_ne!(
            a.digest(),
            InitramfsSpec::new(&changed).digest(),
            "load order matters"
        );
    }

    #[test]
    fn ensure_writes_once_and_repairs_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("initramfs");
        let spec = InitramfsSpec::new(&inputs());
        let progress = crate::progress::Progress::new(false);
        let (path, built) = ensure(&spec, &cache, &progress).unwrap();
        assert!(built);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            spec.write(Vec::new()).unwrap()
        );
        let (again, built) = ensure(&spec, &cache, &progress).unwrap();
        assert_eq!((again.as_path(), built), (path.as_path(), false));
        std::fs::write(&path, b"070701 truncated").unwrap();
        let (_, built) = ensure(&spec, &cache, &progress).unwrap();
        assert!(built, "damaged file is rebuilt");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            spec.write(Vec::new()).unwrap()
        );
    }

    #[test]
    fn lists_applets_of_a_real_busybox() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("skipped: /bin/busybox is not installed (apt-get install busybox-static)");
            return;
        }
        let applets = busybox_applets(busybox).unwrap();
        assert!(applets.iter().any(|a| a == "bin/sh"), "{applets:?}");
        assert!(applets.iter().all(|a| is_plain_relative(a)));
        let err = busybox_applets(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
