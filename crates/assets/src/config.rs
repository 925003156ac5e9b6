//! What the caller asks for ([`AssetsConfig`]) and what it gets back
//! ([`Assets`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Debian's metapackage for the cloud kernel flavour: virtio, vsock,
/// virtio-fs, overlay, squashfs and erofs as modules; ext4 and PVH built in.
pub const DEFAULT_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest needs today: the virtio-mmio transport and the console
/// that carries the agent channel (their dependencies come along).
pub const DEFAULT_MODULES: &[&str] = &["virtio_mmio", "virtio_console"];

/// The static busybox Debian's `busybox-static` installs.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Where the guest kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KernelSource {
    /// A Debian kernel package fetched with apt. `package` may be a
    /// metapackage (`linux-image-cloud-amd64`), resolved to the versioned
    /// package behind it, or a versioned `linux-image-RELEASE` package.
    Debian {
        /// The apt package name.
        package: String,
    },
    /// A kernel image on disk, used in place (never copied).
    Local {
        /// The kernel image (bzImage, vmlinux or PVH ELF).
        kernel: PathBuf,
        /// Its `lib/modules/RELEASE` directory; `None` when the wanted
        /// drivers are built into the kernel (the module list is then ignored).
        modules_dir: Option<PathBuf>,
    },
}

impl Default for KernelSource {
    fn default() -> Self {
        Self::Debian {
            package: DEFAULT_PACKAGE.to_owned(),
        }
    }
}

/// Everything [`crate::prepare`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetsConfig {
    /// nook's cache directory (see [`default_home`]).
    pub home: PathBuf,
    /// The guest kernel.
    pub kernel: KernelSource,
    /// Kernel modules to put in the initramfs (dependencies are added).
    pub modules: Vec<String>,
    /// The static guest agent; it becomes `/init`.
    pub agent: PathBuf,
    /// A static busybox for the guest's `/bin`.
    pub busybox: PathBuf,
    /// Show progress bars when stderr is a terminal; never otherwise.
    pub progress: bool,
}

impl AssetsConfig {
    /// Defaults for everything but the agent: [`default_home`], Debian's
    /// cloud kernel, [`DEFAULT_MODULES`], `/bin/busybox`, progress on.
    pub fn new(agent: impl Into<PathBuf>) -> Self {
        Self {
            home: default_home(),
            kernel: KernelSource::default(),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            agent: agent.into(),
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            progress: true,
        }
    }
}

/// What was done by one `prepare` call: telemetry a caller (or a test) can
/// check. All false on the fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareWork {
    /// The fast-path index missed, so the cache was checked under the lock
    /// and by content hash (tens of milliseconds; implies no download or
    /// build by itself).
    pub verified: bool,
    /// A kernel package was downloaded.
    pub downloaded: bool,
    /// An initramfs was written.
    pub built_initramfs: bool,
}

/// A kernel and initramfs ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assets {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The kernel's build config (`config-RELEASE`), when known.
    pub kernel_config: Option<PathBuf>,
    /// The uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
    /// The modules in the initramfs, in load order (normalized names). The
    /// guest finds their paths in `/etc/nook/modules`.
    pub modules: Vec<String>,
    /// What this call had to do.
    #[serde(skip)]
    pub work: PrepareWork,
}

/// nook's cache directory: `$NOOK_HOME`, else `$XDG_CACHE_HOME/nook`, else
/// `~/.cache/nook` (relative values are ignored, as the XDG spec says).
pub fn default_home() -> PathBuf {
    home_from(|name| std::env::var_os(name))
}

fn home_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let abs = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(home) = abs("NOOK_HOME") {
        return home;
    }
    if let Some(cache) = abs("XDG_CACHE_HOME") {
        return cache.join("nook");
    }
    if let Some(home) = abs("HOME") {
        return home.join(".cache").join("nook");
    }
    // No home at all (a bare service environment): a per-user temp dir.
    std::env::temp_dir().join(format!("nook-{}", rustix::process::getuid().as_raw()))
}

/// Paths inside the cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_owned(),
        }
    }
    /// Kernel entries: `kernels/<sha256 of the .deb>/`.
    pub fn kernels(&self) -> PathBuf {
        self.home.join("kernels")
    }
    /// Which versioned package a Debian package name resolved to.
    pub fn pin(&self, package: &str) -> PathBuf {
        self.kernels().join("pins").join(format!("{package}.json"))
    }
    /// Built initramfs images: `initramfs/<sha256 of inputs>.cpio`.
    pub fn initramfs(&self) -> PathBuf {
        self.home.join("initramfs")
    }
    /// Scratch space on the same filesystem, for atomic renames.
    pub fn tmp(&self) -> PathBuf {
        self.home.join("tmp")
    }
    /// The fast-path index.
    pub fn index(&self) -> PathBuf {
        self.home.join("assets-index.json")
    }
    /// The lock serializing slow-path work between processes.
    pub fn lock(&self) -> PathBuf {
        self.home.join("assets.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_follows_nook_home_then_xdg_then_home() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
        }
        let all = [
            ("NOOK_HOME", "/n"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(home_from(env(&all)), Path::new("/n"));
        assert_eq!(home_from(env(&all[1..])), Path::new("/x/nook"));
        assert_eq!(home_from(env(&all[2..])), Path::new("/h/.cache/nook"));
        let relative = [
            ("NOOK_HOME", "rel"),
            ("XDG_CACHE_HOME", "rel"),
            ("HOME", "/h"),
        ];
        assert_eq!(home_from(env(&relative)), Path::new("/h/.cache/nook"));
        assert!(home_from(env(&[])).starts_with(std::env::temp_dir()));
    }

    #[test]
    fn config_defaults() {
        let cfg = AssetsConfig::new("/agent");
        assert_eq!(cfg.modules, ["virtio_mmio", "virtio_console"]);
        assert_eq!(cfg.busybox, Path::new("/bin/busybox"));
        assert_eq!(
            cfg.kernel,
            KernelSource::Debian {
                package: "linux-image-cloud-amd64".into()
            }
        );
    }
}
