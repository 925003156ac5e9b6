//! Debian's kernel packages through apt: resolve a (meta)package to the
//! versioned `linux-image-RELEASE` package and its SHA-256 (`apt-cache
//! show`), remember that answer as a *pin*, and download the `.deb`
//! (`apt-get download`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{cache_err, AssetsError};
use crate::fsutil::sha256_file;
use crate::progress::Progress;

/// The versioned package a requested name resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DebPin {
    /// What the caller asked for (`linux-image-cloud-amd64`).
    pub requested: String,
    /// The versioned package (`linux-image-6.1.0-56-cloud-amd64`).
    pub package: String,
    /// Its version (`6.1.192-2`).
    pub version: String,
    /// SHA-256 of the `.deb`, from apt's index.
    pub sha256: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// Unpacked size in bytes (for the extract progress bar).
    pub installed_size: u64,
}

impl DebPin {
    /// Reads a saved pin; `None` if missing or unreadable.
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves the pin atomically.
    pub fn save(&self, path: &Path) -> Result<(), AssetsError> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| cache_err("encode", path)(e.into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(cache_err("create directory", dir))?;
        }
        nook_fsutil::write_atomic(path, 0o644, |f| std::io::Write::write_all(f, &json))?;
        Ok(())
    }
}

/// Asks apt which versioned package `requested` stands for.
pub(crate) fn resolve(requested: &str, progress: &Progress) -> Result<DebPin, AssetsError> {
    let spinner = progress.spinner(format!("asking apt about {requested}"));
    let pin = resolve_quietly(requested);
    spinner.finish_and_clear();
    pin
}

fn resolve_quietly(requested: &str) -> Result<DebPin, AssetsError> {
    let mut spec = requested.to_owned();
    // A metapackage depends on the versioned one; follow at most a few hops.
    for _ in 0..4 {
        let fields = apt_show(requested, &spec)?;
        let depends = fields.get("Depends").map(String::as_str).unwrap_or("");
        if let Some((dep, version)) = versioned_dependency(depends) {
            tracing::debug!(target: "nook::assets", from = %spec, to = %dep, "metapackage resolved");
            spec = match version {
                Some(v) => format!("{dep}={v}"),
                None => dep,
            };
            continue;
        }
        let field = |name: &'static str| {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| AssetsError::AptResolve {
                    package: requested.to_owned(),
                    detail: format!("apt-cache show {spec} has no {name} field"),
                })
        };
        let number = |name: &'static str| -> Result<u64, AssetsError> {
            field(name)?
                .trim()
                .parse()
                .map_err(|_| AssetsError::AptResolve {
                    package: requested.to_owned(),
                    detail: format!("apt-cache show {spec} has a malformed {name} field"),
                })
        };
        return Ok(DebPin {
            requested: requested.to_owned(),
            package: field("Package")?,
            version: field("Version")?,
            sha256: field("SHA256")?.to_ascii_lowercase(),
            size: number("Size")?,
            installed_size: number("Installed-Size").unwrap_or(0) * 1024,
        });
    }
    Err(AssetsError::AptResolve {
        package: requested.to_owned(),
        detail: "too many metapackage hops".to_owned(),
    })
}

/// The first `linux-image-<digit>...` package in a Depends field, with the
/// version if pinned by `(= VERSION)`.
pub(crate) fn versioned_dependency(depends: &str) -> Option<(String, Option<String>)> {
    for alternative in depends.split([',', '|']) {
        let alternative = alternative.trim();
        let (name, rest) = match alternative.split_once(' ') {
            Some((n, r)) => (n, r.trim()),
            None => (alternative, ""),
        };
        let name = name.split(':').next().unwrap_or(name);
        let versioned = name
            .strip_prefix("linux-image-")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        if !versioned {
            continue;
        }
        let version = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.trim().strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        return Some((name.to_owned(), version));
    }
    None
}

/// Fields of the first stanza of `apt-cache show` output.
pub(crate) fn parse_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                let value: &mut String = value;
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.trim().to_owned(), value.trim().to_owned());
            last = Some(key.trim().to_owned());
        }
    }
    fields
}

fn apt_show(requested: &str, spec: &str) -> Result<BTreeMap<String, String>, AssetsError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", spec])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| AssetsError::AptMissing {
            tool: "apt-cache",
            source,
        })?;
    let fields = parse_stanza(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() || fields.is_empty() {
        return Err(AssetsError::AptResolve {
            package: requested.to_owned(),
            detail: last_error_line(&out.stderr, &format!("apt-cache show {spec} found nothing")),
        });
    }
    Ok(fields)
}

fn last_error_line(stderr: &[u8], fallback: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .map_or_else(|| fallback.to_owned(), |l| l.trim().to_owned())
}

/// Downloads the pinned `.deb` into `dir` and checks its SHA-256.
pub(crate) fn download(
    pin: &DebPin,
    dir: &Path,
    progress: &Progress,
) -> Result<PathBuf, AssetsError> {
    let spec = format!("{}={}", pin.package, pin.version);
    tracing::info!(target: "nook::assets", package = %spec, size = pin.size, "downloading kernel package");
    let mut child = Command::new("apt-get")
        .args(["-q", "download", &spec])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| AssetsError::AptMissing {
            tool: "apt-get",
            source,
        })?;
    // Drain stderr on a thread so apt never blocks on a full pipe.
    let stderr = child.stderr.take();
    let reader = std::thread::Builder::new()
        .name("nook-apt-stderr".into())
        .spawn(move || {
            let mut text = Vec::new();
            if let Some(mut s) = stderr {
                let _ = s.read_to_end(&mut text);
            }
            text
        })
        .map_err(|source| AssetsError::AptMissing {
            tool: "apt-get",
            source,
        })?;
    let bar = progress.bar(pin.size, "downloading kernel");
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        bar.set_position(dir_size(dir));
        std::thread::sleep(Duration::from_millis(50));
    };
    bar.finish_and_clear();
    let stderr = reader.join().unwrap_or_default();
    let status = status.map_err(|source| AssetsError::AptMissing {
        tool: "apt-get",
        source,
    })?;
    if !status.success() {
        return Err(AssetsError::Download {
            package: spec,
            detail: format!("{status}: {}", last_error_line(&stderr, "no error message")),
        });
    }
    let deb = find_deb(dir, &pin.package).ok_or_else(|| AssetsError::Download {
        package: spec.clone(),
        detail: "apt-get reported success but wrote no .deb".to_owned(),
    })?;
    let (actual, _) = sha256_file(&deb).map_err(cache_err("read", &deb))?;
    if actual != pin.sha256 {
        return Err(AssetsError::Digest {
            package: spec,
            expected: pin.sha256.clone(),
            actual,
        });
    }
    tracing::debug!(target: "nook::assets", deb = %deb.display(), sha256 = %actual, "downloaded");
    Ok(deb)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Provides: linux-latest-modules-6.1.0-56-cloud-amd64, wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)
 continuation line
Size: 1504
SHA256: 00be21c0c17f08ddf26e82d3b53fe7a41efa4a288938da6bb69e89c4b25c281d

Package: second-stanza-ignored
";

    #[test]
    fn parses_the_first_stanza() {
        let f = parse_stanza(META);
        assert_eq!(f["Package"], "linux-image-cloud-amd64");
        assert_eq!(f["Installed-Size"], "13");
        assert_eq!(
            f["Description"],
            "Linux for x86-64 cloud (meta-package)\ncontinuation line"
        );
        assert_eq!(f["Size"], "1504");
        assert!(!f.values().any(|v| v.contains("second-stanza")));
    }

    #[test]
    fn finds_the_versioned_dependency() {
        let f = parse_stanza(META);
        assert_eq!(
            versioned_dependency(&f["Depends"]),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".to_owned(),
                Some("6.1.192-2".to_owned())
            ))
        );
        // A versioned package's own Depends names no linux-image package.
        assert_eq!(
            versioned_dependency("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"),
            None
        );
        assert_eq!(
            versioned_dependency("linux-image-6.12.9-amd64:amd64"),
            Some(("linux-image-6.12.9-amd64".to_owned(), None))
        );
        assert_eq!(versioned_dependency("linux-image-amd64 (>= 1)"), None);
    }

    #[test]
    fn pins_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins/p.json");
        let pin = DebPin {
            requested: "linux-image-cloud-amd64".into(),
            package: "linux-image-6.1.0-56-cloud-amd64".into(),
            version: "6.1.192-2".into(),
            sha256: "ab".repeat(32),
            size: 1,
            installed_size: 2,
        };
        assert_eq!(DebPin::load(&path), None);
        pin.save(&path).unwrap();
        assert_eq!(DebPin::load(&path), Some(pin));
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(DebPin::load(&path), None);
    }

    #[test]
    fn error_line_prefers_apt_errors() {
        let stderr = b"W: Download is performed unsandboxed\nE: Can't find a source to download version 'x'\nlast\n";
        assert_eq!(
            last_error_line(stderr, "fb"),
            "E: Can't find a source to download version 'x'"
        );
        assert_eq!(last_error_line(b"", "fb"), "fb");
    }
}
