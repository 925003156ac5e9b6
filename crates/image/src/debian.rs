//! Debian images: a root built from Debian's own packages with
//! `mmdebstrap`, stored as a one-layer image and cached by recipe.

use std::collections::BTreeSet;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::digest::Digest;
use crate::error::{io_err, ImageError};
use crate::manifest;
use crate::rootfs::tail;
use crate::store::{remove_path, ImageInfo, ImageStore};

/// Variant passed to mmdebstrap: Essential + Priority: required + apt.
const VARIANT: &str = "minbase";
/// Bump when the recipe's meaning changes, to invalidate cached builds.
const RECIPE_VERSION: u32 = 1;
/// Environment variable naming the Debian mirror (default: mmdebstrap's).
pub const MIRROR_ENV: &str = "NOOK_DEBIAN_MIRROR";

/// Steps of a Debian build beyond installing its packages. A step that is
/// on is part of the recipe (and of its cache key); the default (none)
/// keeps the keys recipes had before steps existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebianSteps {
    /// Build fontconfig's caches so that they are valid in the stored
    /// image ([`font_caches_hook`]): the first program using fonts in a
    /// VM then starts at once instead of rebuilding them (tens of seconds
    /// under TCG). Does nothing in a root without fontconfig.
    pub font_caches: bool,
}

/// The font-caches step, an mmdebstrap customize hook (`$1` is the root
/// being built; it runs after the packages are installed). fontconfig's
/// caches record each font directory's modification time to the
/// nanosecond and count as stale when it differs, while the stored image
/// keeps other times: mmdebstrap clamps every time in its tar to the time
/// it started (`--clamp-mtime`), and tar headers carry whole seconds. So
/// the hook sets the font directories' times, and those of the directories
/// their symlinks lead to (`/usr/share/fonts/cmap/*` are poppler's), to
/// `epoch`, whole seconds no later than mmdebstrap's start (the clamp
/// leaves them alone), then runs `fc-cache` in the root: the caches it
/// writes match the stored image. All of it runs inside the root, so that
/// symlinks resolve there and not on the build host.
fn font_caches_hook(epoch: u64) -> String {
    format!(
        r#"[ -x "$1/usr/bin/fc-cache" ] || exit 0
exec chroot "$1" /bin/sh -c '
for d in /usr/share/fonts /usr/share/X11/fonts /usr/local/share/fonts; do
    [ -d "$d" ] && find -L "$d" -type d -exec touch -c -m -d @{epoch} {{}} +
done
exec fc-cache --force --system-only'
"#
    )
}

/// Whole seconds no later than the time mmdebstrap started with, which
/// clamps the times in its tar to it: now, or `SOURCE_DATE_EPOCH` when set
/// and earlier (mmdebstrap then clamps to that).
fn build_epoch() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(now, |sde| sde.min(now))
}

/// A checked Debian build recipe: package set, mirror, cache key and the
/// path of its cache entry.
struct DebianRecipe<'a> {
    packages: BTreeSet<&'a str>,
    mirror: Option<String>,
    key: Digest,
    cache_path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    digest: String,
}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> ImageError {
    ImageError::InvalidArgument {
        what,
        value: value.to_owned(),
        rule,
    }
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "image name",
            name,
            "use letters, digits and . _ - / : (128 at most), starting with a letter or digit",
        ))
    }
}

fn check_suite(suite: &str) -> Result<(), ImageError> {
    let ok = !suite.is_empty()
        && suite.len() <= 32
        && suite.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && suite
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "Debian suite",
            suite,
            "use a suite or codename such as bookworm or stable",
        ))
    }
}

/// Debian policy: lower-case letters, digits, `+ - .`, starting with a
/// letter or digit, at least two characters.
fn check_package(pkg: &str) -> Result<(), ImageError> {
    let ok = pkg.len() >= 2
        && pkg.len() <= 100
        && pkg
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && pkg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "Debian package name",
            pkg,
            "use a package name as apt knows it, such as python3",
        ))
    }
}

fn check_mirror(mirror: &str) -> Result<(), ImageError> {
    let ok = (mirror.starts_with("http://") || mirror.starts_with("https://"))
        && !mirror
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            MIRROR_ENV,
            mirror,
            "use an http:// or https:// mirror URL",
        ))
    }
}

/// What identifies a build: same recipe, same image.
fn recipe_key(
    suite: &str,
    packages: &BTreeSet<&str>,
    mirror: Option<&str>,
    steps: DebianSteps,
) -> Digest {
    let mut recipe = json!({
        "version": RECIPE_VERSION,
        "suite": suite,
        "variant": VARIANT,
        "architecture": "amd64",
        "packages": packages,
        "mirror": mirror,
    });
    if steps.font_caches {
        recipe["steps"] = json!(["font-caches"]);
    }
    Digest::of_bytes(recipe.to_string().as_bytes())
}

impl ImageStore {
    /// Builds (or finds in the cache) an image named `name` from Debian
    /// `suite` with `packages` installed on top of the minbase variant,
    /// using `mmdebstrap` (as root). The same suite, package set and mirror
    /// (`NOOK_DEBIAN_MIRROR`) give the cached image without rebuilding.
    /// `progress` lets mmdebstrap's output through to stderr.
    pub fn build_debian(
        &self,
        name: &str,
        suite: &str,
        packages: &[String],
        progress: bool,
    ) -> Result<ImageInfo, ImageError> {
        self.build_debian_with(name, suite, packages, DebianSteps::default(), progress)
    }

    /// [`ImageStore::build_debian`] with build `steps` after the packages
    /// are installed (part of the recipe: cached apart from a build
    /// without them).
    pub fn build_debian_with(
        &self,
        name: &str,
        suite: &str,
        packages: &[String],
        steps: DebianSteps,
        progress: bool,
    ) -> Result<ImageInfo, ImageError> {
        check_name(name)?;
        let DebianRecipe {
            packages,
            mirror,
            key,
            cache_path,
        } = self.debian_recipe(suite, packages, steps)?;

        let _store_lock = self.shared_lock()?;
        let _build_lock = self.named_lock(&format!("debian-{}", key.hex()))?;
        if let Some(digest) = self.cached_build(&cache_path)? {
            tracing::info!(name, suite, image = %digest, "image: Debian build cached");
            self.tag(name, &digest)?;
            return self.info_for(&digest, name);
        }

        let work = self.temp_path();
        fs::create_dir_all(&work).map_err(io_err("create", &work))?;
        let result = self.debian_build(&work, suite, &packages, mirror.as_deref(), steps, progress);
        let _ = remove_path(&work);
        let digest = result?;
        let entry = serde_json::to_vec(&CacheEntry {
            digest: digest.to_string(),
        })
        .map_err(|source| ImageError::Json {
            op: "serialize",
            path: cache_path.clone(),
            source,
        })?;
        nook_fsutil::write_atomic(&cache_path, 0o644, |f| f.write_all(&entry))?;
        self.tag(name, &digest)?;
        self.info_for(&digest, name)
    }

    /// Whether a Debian build of `suite` with `packages` (and the current
    /// `NOOK_DEBIAN_MIRROR`) is in the cache, so that
    /// [`ImageStore::build_debian`] would return at once.
    pub fn debian_cached(&self, suite: &str, packages: &[String]) -> Result<bool, ImageError> {
        self.debian_cached_with(suite, packages, DebianSteps::default())
    }

    /// Whether a Debian build with `steps` is in the cache, so that
    /// [`ImageStore::build_debian_with`] would return at once.
    pub fn debian_cached_with(
        &self,
        suite: &str,
        packages: &[String],
        steps: DebianSteps,
    ) -> Result<bool, ImageError> {
        let recipe = self.debian_recipe(suite, packages, steps)?;
        Ok(self.cached_build(&recipe.cache_path)?.is_some())
    }

    /// The checked recipe of a Debian build.
    fn debian_recipe<'a>(
        &self,
        suite: &str,
        packages: &'a [String],
        steps: DebianSteps,
    ) -> Result<DebianRecipe<'a>, ImageError> {
        check_suite(suite)?;
        for p in packages {
            check_package(p)?;
        }
        let mirror = std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty());
        if let Some(m) = &mirror {
            check_mirror(m)?;
        }
        let packages: BTreeSet<&str> = packages.iter().map(String::as_str).collect();
        let key = recipe_key(suite, &packages, mirror.as_deref(), steps);
        let cache_path = self
            .root()
            .join("debian")
            .join(format!("{}.json", key.hex()));
        Ok(DebianRecipe {
            packages,
            mirror,
            key,
            cache_path,
        })
    }

    fn cached_build(&self, cache_path: &Path) -> Result<Option<Digest>, ImageError> {
        let bytes = match fs::read(cache_path) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let Ok(entry) = serde_json::from_slice::<CacheEntry>(&bytes) else {
            return Ok(None);
        };
        let Ok(digest) = Digest::parse(&entry.digest) else {
            return Ok(None);
        };
        Ok(self.read_record(&digest)?.map(|_| digest))
    }

    fn debian_build(
        &self,
        work: &Path,
        suite: &str,
        packages: &BTreeSet<&str>,
        mirror: Option<&str>,
        steps: DebianSteps,
        progress: bool,
    ) -> Result<Digest, ImageError> {
        let tar_path = work.join("rootfs.tar");
        let mut cmd = mmdebstrap_command();
        cmd.arg(format!("--variant={VARIANT}"))
            .arg("--architectures=amd64")
            .arg("--format=tar");
        if !packages.is_empty() {
            cmd.arg(format!(
                "--include={}",
                packages.iter().copied().collect::<Vec<_>>().join(",")
            ));
        }
        if steps.font_caches {
            cmd.arg(format!(
                "--customize-hook={}",
                font_caches_hook(build_epoch())
            ));
        }
        // Options go before `--`: after it every word is a positional
        // (suite, target, mirrors).
        if !progress {
            cmd.arg("--quiet")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        cmd.arg("--").arg(suite).arg(&tar_path);
        if let Some(m) = mirror {
            cmd.arg(m);
        }
        cmd.stdin(Stdio::null()).env("LC_ALL", "C.UTF-8");
        tracing::info!(
            suite,
            ?packages,
            "image: building Debian root with mmdebstrap"
        );
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::ToolMissing {
                    tool: "mmdebstrap",
                    package: "mmdebstrap",
                })
            }
            Err(e) => return Err(io_err("run mmdebstrap for", &tar_path)(e)),
        };
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            return Err(ImageError::Tool {
                tool: "mmdebstrap",
                task: format!("build a {suite} root (check the package names and that the Debian mirror is reachable)"),
                status: output.status,
                output: if progress { "(shown above)".to_owned() } else { tail(&text, 3000) },
            });
        }
        let spinner = (progress && std::io::stderr().is_terminal()).then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message("building the ext4 root file system");
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        let (layer, layer_size) = self.adopt_blob_file(&tar_path, "mmdebstrap output", None)?;
        let packages_label = packages.iter().copied().collect::<Vec<_>>().join(",");
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                "Cmd": ["/bin/bash"],
                "Labels": {
                    "org.nook.debian.suite": suite,
                    "org.nook.debian.packages": packages_label,
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        });
        let config_bytes = config.to_string().into_bytes();
        let config_digest = self.put_blob_bytes(&config_bytes, "Debian image config", None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": [{"mediaType": manifest::OCI_LAYER_TAR, "digest": layer.to_string(), "size": layer_size}],
        });
        let digest = self.put_blob_bytes(
            manifest.to_string().as_bytes(),
            "Debian image manifest",
            None,
        )?;
        let built = self.commit_image(&digest);
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        built?;
        Ok(digest)
    }
}

/// Programs that tie mmdebstrap's life to this thread's: `setpriv
/// --pdeathsig KILL` kills the next one when the thread that started it
/// dies (a SIGKILLed nook too), and `unshare --pid --fork --kill-child
/// --mount-proc` runs mmdebstrap as the first process of a PID and mount
/// namespace of its own, so when that one dies the kernel kills every
/// process it started (apt, dpkg, its workers) and drops its mounts.
const CONFINE: &[&str] = &[
    "setpriv",
    "--pdeathsig",
    "KILL",
    "unshare",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--",
];

/// The command that runs mmdebstrap: under [`CONFINE`] when running as
/// root with util-linux's `setpriv` and `unshare` at hand (mmdebstrap
/// needs root for its default mode anyway), else mmdebstrap alone.
fn mmdebstrap_command() -> Command {
    let root = rustix::process::geteuid().is_root();
    let have = |tool: &str| {
        ["/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
    };
    if root && have("setpriv") && have("unshare") && have("mmdebstrap") {
        let mut cmd = Command::new(CONFINE[0]);
        cmd.args(&CONFINE[1..]).arg("mmdebstrap");
        cmd
    } else {
        Command::new("mmdebstrap")
    }
}

/// Drops cache entries whose image is gone or unnamed.
pub(crate) fn gc_cache(store: &ImageStore, named: &BTreeSet<String>) -> Result<(), ImageError> {
    let dir = store.root().join("debian");
    for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
        let entry = entry.map_err(io_err("read directory", &dir))?;
        let keep = fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .is_some_and(|e| named.contains(&e.digest))
            && !nook_fsutil::is_temp_name(&entry.file_name());
        if !keep {
            remove_path(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_validated() {
        assert!(check_name("py").is_ok());
        assert!(check_name("team/py:3").is_ok());
        assert!(check_name("-rf").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_suite("bookworm").is_ok());
        assert!(check_suite("--foo").is_err());
        assert!(check_package("python3").is_ok());
        assert!(check_package("g++").is_ok());
        assert!(check_package("--force").is_err());
        assert!(check_package("a,b").is_err());
        assert!(check_mirror("http://deb.debian.org/debian").is_ok());
        assert!(check_mirror("file:///etc").is_err());
    }

    #[test]
    fn recipe_key_ignores_order_and_duplicates() {
        let a: BTreeSet<&str> = ["git", "python3"].into_iter().collect();
        let b: BTreeSet<&str> = ["python3", "git", "git"].into_iter().collect();
        let none = DebianSteps::default();
        assert_eq!(
            recipe_key("bookworm", &a, None, none),
            recipe_key("bookworm", &b, None, none)
        );
        assert_ne!(
            recipe_key("bookworm", &a, None, none),
            recipe_key("trixie", &a, None, none)
        );
    }

    #[test]
    fn a_build_step_is_part_of_the_recipe_and_no_step_keeps_the_old_key() {
        let a: BTreeSet<&str> = ["xterm"].into_iter().collect();
        let fonts = DebianSteps { font_caches: true };
        assert_ne!(
            recipe_key("bookworm", &a, None, fonts),
            recipe_key("bookworm", &a, None, DebianSteps::default())
        );
        // The key a recipe without steps had before steps existed.
        let before = json!({
            "version": RECIPE_VERSION,
            "suite": "bookworm",
            "variant": VARIANT,
            "architecture": "amd64",
            "packages": a,
            "mirror": None::<&str>,
        });
        assert_eq!(
            recipe_key("bookworm", &a, None, DebianSteps::default()),
            Digest::of_bytes(before.to_string().as_bytes())
        );
    }

    /// The font-caches hook on a fake root (busybox for the shell, `find`
    /// and `touch`; a script for `fc-cache` that records the time it
    /// sees): the font directories, and a directory a font symlink leads
    /// to, get the build's epoch (whole seconds) before `fc-cache` runs;
    /// other directories keep their times; a root without fontconfig is
    /// left alone.
    #[test]
    fn the_font_caches_hook_sets_font_directory_times_before_fc_cache() {
        use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: the hook runs under chroot, which needs root");
            return;
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            eprintln!("skipping: no /bin/busybox (apt-get install busybox-static)");
            return;
        }
        let epoch = 1_700_000_000;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let font_dirs = [
            "usr/share/fonts/truetype/dejavu",
            "usr/share/X11/fonts/misc",
            "usr/share/poppler/cMap/Adobe-Japan1",
        ];
        for d in font_dirs.iter().chain(&["etc/keep", "bin", "usr/bin"]) {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::create_dir_all(r.join("usr/share/fonts/cmap")).unwrap();
        symlink(
            "../../poppler/cMap/Adobe-Japan1",
            r.join("usr/share/fonts/cmap/adobe-japan1"),
        )
        .unwrap();
        fs::copy(busybox, r.join("bin/busybox")).unwrap();
        for applet in ["sh", "find", "touch", "stat"] {
            symlink("busybox", r.join("bin").join(applet)).unwrap();
        }
        let later = "2024-01-02 03:04:05.123456789";
        for d in font_dirs.iter().chain(&["usr/share/fonts", "etc/keep"]) {
            let status = Command::new("touch")
                .args(["-m", "-d", later])
                .arg(r.join(d))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let time = |d: &str| {
            let m = fs::metadata(r.join(d)).unwrap();
            (m.mtime() as u64, m.mtime_nsec())
        };
        let run = || {
            let out = Command::new("sh")
                .args(["-c", &font_caches_hook(epoch), "sh"])
                .arg(r)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let kept = time("etc/keep");
        assert_eq!(kept.1, 123_456_789);
        // No fontconfig: nothing changes.
        run();
        assert_eq!(time("usr/share/fonts/truetype/dejavu"), kept);

        let fc_cache = r.join("usr/bin/fc-cache");
        let script = "#!/bin/sh\necho \"$@\" > /fc-cache.args\nstat -c %Y.%y /usr/share/poppler/cMap/Adobe-Japan1 > /fc-cache.saw\n";
        fs::write(&fc_cache, script).unwrap();
        fs::set_permissions(&fc_cache, fs::Permissions::from_mode(0o755)).unwrap();
        run();
        for d in font_dirs.iter().chain(&["usr/share/fonts"]) {
            assert_eq!(time(d), (epoch, 0), "{d}");
        }
        assert_eq!(time("etc/keep"), kept);
        let args = fs::read_to_string(r.join("fc-cache.args")).unwrap();
        assert_eq!(args, "--force --system-only\n");
        let saw = fs::read_to_string(r.join("fc-cache.saw")).unwrap();
        assert!(saw.starts_with(&format!("{epoch}.")), "fc-cache saw {saw}");
        assert!(saw.contains(".000000000"), "fc-cache saw {saw}");
    }
}
