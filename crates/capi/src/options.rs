//! The C options, checked and in Rust's terms: what boots ([`VmOptions`])
//! and how a command runs ([`ExecOptions`]).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nook_lib::{EngineKind, ImageInfo, ImageStore, PullOptions, Snapshot, VmConfig};
use nook_serve::wire::ExecSpec;
use nook_serve::SessionSpec;

use crate::status::CapiError;

/// What a VM boots from and with (`nook_vm_options`, checked).
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// An image reference, pulled when the store has none.
    pub image: Option<String>,
    pub engine: EngineKind,
    /// `None`: nook's default.
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u8>,
    pub boot_timeout_s: Option<u64>,
    pub net: bool,
    /// A named snapshot to restore instead of booting.
    pub snapshot: Option<String>,
}

impl VmOptions {
    /// The library configuration for these options, the image resolved
    /// (pulled when missing).
    pub fn config(&self, home: &Path) -> Result<VmConfig, CapiError> {
        let mut cfg = VmConfig {
            engine: self.engine,
            progress: false,
            ..VmConfig::default()
        };
        cfg.home = home.to_path_buf();
        cfg.memory_mib = self.memory_mib.unwrap_or(cfg.memory_mib);
        cfg.vcpus = self.vcpus.unwrap_or(cfg.vcpus);
        if let Some(s) = self.boot_timeout_s {
            cfg.boot_timeout = Duration::from_secs(s);
        }
        cfg.net = self.net.then(nook_lib::NetConfig::default);
        if let Some(reference) = &self.image {
            cfg.image = Some(nook_lib::ImageRoot::new(&resolve_image(home, reference)?));
        }
        Ok(cfg)
    }

    /// The session spec for these options: the image pulled when missing,
    /// the snapshot (when given) opened and checked against the options.
    pub fn session_spec(&self, home: &Path, name: &str) -> Result<SessionSpec, CapiError> {
        let defaults = VmConfig::default();
        let mut spec = SessionSpec::new(
            name,
            self.engine.name(),
            self.memory_mib.unwrap_or(defaults.memory_mib),
            self.vcpus.unwrap_or(defaults.vcpus),
            self.boot_timeout_s
                .unwrap_or(defaults.boot_timeout.as_secs()),
        );
        spec.net = self.net.then(nook_lib::NetConfig::default);
        if let Some(reference) = &self.image {
            resolve_image(home, reference)?;
            spec.image = Some(reference.clone());
        }
        if let Some(snapshot) = self.open_snapshot(home)? {
            spec = spec.restoring(&snapshot);
        }
        Ok(spec)
    }

    /// The named snapshot to restore, if any, refused when the options ask
    /// for what a restore cannot honour (as `nook run --snapshot` does).
    pub fn open_snapshot(&self, home: &Path) -> Result<Option<Snapshot>, CapiError> {
        let Some(name) = &self.snapshot else {
            return Ok(None);
        };
        let path = nook_lib::named_snapshot(home, name)?;
        if !path.exists() {
            return Err(CapiError::NoSnapshot(name.clone()));
        }
        let snap = Snapshot::open(&path)?;
        let conflict = |why: String| CapiError::Invalid {
            what: "options with a snapshot",
            why,
        };
        if let Some(image) = &self.image {
            return Err(conflict(format!(
                "image `{image}`: the snapshot has its own root (leave image NULL)"
            )));
        }
        if self
            .memory_mib
            .is_some_and(|m| m != snap.manifest.memory_mib)
        {
            return Err(conflict(format!(
                "memory_mib: the snapshot has {} MiB (leave it 0)",
                snap.manifest.memory_mib
            )));
        }
        if self.vcpus.is_some_and(|c| c != snap.manifest.vcpus) {
            return Err(conflict(format!(
                "cpus: the snapshot has {} (leave it 0)",
                snap.manifest.vcpus
            )));
        }
        Ok(Some(snap))
    }
}

/// Image `reference` from the store under `home`, pulled when missing.
fn resolve_image(home: &Path, reference: &str) -> Result<ImageInfo, CapiError> {
    ImageStore::open(&home.join("images"))
        .and_then(|store| store.get_or_pull(reference, &PullOptions::default()))
        .map_err(|source| CapiError::Image {
            reference: reference.to_string(),
            source: Box::new(source),
        })
}

/// How one command runs (`nook_exec_options`, checked).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<Duration>,
    /// Bytes the command reads on its stdin (else its stdin is empty).
    pub stdin: Option<Vec<u8>>,
}

impl ExecOptions {
    /// `KEY=VALUE` strings as pairs.
    pub fn parse_env(list: Vec<String>) -> Result<Vec<(String, String)>, CapiError> {
        list.into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(CapiError::Invalid {
                    what: "env",
                    why: format!("expected KEY=VALUE, got `{kv}`"),
                }),
            })
            .collect()
    }

    /// The session request for `argv` run with these options.
    pub fn session_spec(&self, argv: Vec<String>) -> ExecSpec {
        ExecSpec {
            argv,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            user: self.user.clone(),
            tty: None,
            stdin: self.stdin.is_some(),
            detach: false,
            timeout_ms: self
                .timeout
                .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            service: false,
        }
    }
}

/// The `nook` binary that hosts sessions: `NOOK_BIN`, else `nook` on PATH.
pub fn nook_binary() -> Result<PathBuf, CapiError> {
    if let Some(bin) = std::env::var_os("NOOK_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nook"))
        .find(|p| p.is_file())
        .ok_or(CapiError::NoNookBinary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_strings_become_pairs_and_malformed_ones_are_refused() {
        let env = ExecOptions::parse_env(vec!["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
        for bad in ["NOEQUALS", "=v"] {
            let e = ExecOptions::parse_env(vec![bad.into()]).unwrap_err();
            assert!(e.message().contains(bad), "{e}");
        }
    }

    #[test]
    fn a_session_spec_has_the_options_and_nook_defaults_elsewhere() {
        let home = std::env::temp_dir();
        let opts = VmOptions {
            engine: EngineKind::Qemu,
            memory_mib: Some(512),
            net: true,
            ..VmOptions::default()
        };
        let spec = opts.session_spec(&home, "c1").unwrap();
        assert_eq!(spec.name, "c1");
        assert_eq!(spec.engine, "qemu");
        assert_eq!(spec.memory_mib, 512);
        assert_eq!(spec.vcpus, VmConfig::default().vcpus);
        assert!(spec.net.is_some());
        assert!(spec.image.is_none() && spec.snapshot.is_none());
    }

    #[test]
    fn an_absent_snapshot_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let opts = VmOptions {
            snapshot: Some("absent-snap".into()),
            ..VmOptions::default()
        };
        let e = opts.open_snapshot(home).unwrap_err();
        assert_eq!(e.status(), crate::nook_status::NOOK_ERR_NOT_FOUND);
        assert!(e.message().contains("absent-snap"), "{e}");
        let bad = VmOptions {
            snapshot: Some("../up".into()),
            ..VmOptions::default()
        };
        assert_eq!(
            bad.open_snapshot(home).unwrap_err().status(),
            crate::nook_status::NOOK_ERR_INVALID_ARGUMENT
        );
    }
}
