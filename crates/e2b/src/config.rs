//! How the server is set up: where it listens, its API key, and what the
//! sandboxes' VMs are made of.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::E2bError;

/// The address `nook serve --e2b` listens on without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:49982";
/// The templateID of E2B's default template.
pub const BASE_TEMPLATE: &str = "base";
/// The nook image behind [`BASE_TEMPLATE`] unless configured otherwise.
pub const DEFAULT_BASE_IMAGE: &str = "e2b-base";
/// What the base image holds on top of Debian's minbase (bash, coreutils).
pub const BASE_PACKAGES: &[&str] = &["python3"];
/// The Debian suite the base image is built from.
pub const BASE_SUITE: &str = "bookworm";
/// Sandbox lifetime when a create names none (E2B's default).
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// Environment variable holding the API key.
pub const API_KEY_ENV: &str = "NOOK_E2B_API_KEY";

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct E2bConfig {
    /// `$NOOK_HOME`: sessions, images, the generated key.
    pub home: PathBuf,
    /// The `nook` binary (session hosts are it, re-executed).
    pub exe: PathBuf,
    pub listen: SocketAddr,
    /// The key every control-plane call must carry (`X-API-Key`).
    pub api_key: String,
    /// `auto`, `qemu` or `kvm`.
    pub engine: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub kernel: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub boot_timeout_s: u64,
    /// The nook image that templateID `base` names.
    pub base_image: String,
}

impl E2bConfig {
    /// The nook image behind `template`: `base` is [`E2bConfig::base_image`],
    /// any other templateID names an image in the store.
    pub fn template_image(&self, template: &str) -> Result<String, E2bError> {
        let image = if template == BASE_TEMPLATE {
            self.base_image.clone()
        } else {
            template.to_string()
        };
        let store = nook::ImageStore::open(&self.home.join("images"))
            .map_err(|e| E2bError::Store(Box::new(e)))?;
        match store.get(&image) {
            Ok(Some(_)) => Ok(image),
            _ => Err(E2bError::NoTemplate {
                template: template.to_string(),
                image,
            }),
        }
    }

    /// Builds the base template's image unless the store has it (cached
    /// by recipe: a second build of the same recipe is instant).
    pub fn ensure_base_image(&self, progress: bool) -> Result<(), E2bError> {
        let store = nook::ImageStore::open(&self.home.join("images"))
            .map_err(|e| E2bError::Store(Box::new(e)))?;
        if let Ok(Some(_)) = store.get(&self.base_image) {
            return Ok(());
        }
        let packages: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
        store
            .build_debian(&self.base_image, BASE_SUITE, &packages, progress)
            .map(|_| ())
            .map_err(|e| E2bError::BaseImage {
                image: self.base_image.clone(),
                source: Box::new(e),
            })
    }
}

/// The API key: `given` (from `--api-key` or [`API_KEY_ENV`]), else the
/// one stored under `home` (mode 0600), generated on first use.
pub fn api_key(home: &Path, given: Option<String>) -> Result<String, E2bError> {
    if let Some(k) = given.filter(|k| !k.is_empty()) {
        return Ok(k);
    }
    let path = home.join("e2b").join("api-key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if !k.is_empty() {
            return Ok(k);
        }
    }
    let io = |op| {
        let path = path.clone();
        move |source| E2bError::Io { op, path, source }
    };
    let dir = home.join("e2b");
    std::fs::create_dir_all(&dir).map_err(|source| E2bError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let key = format!("e2b_{}", crate::sandboxes::random_hex(20));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io("create"))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod"))?;
    f.write_all(format!("{key}\n").as_bytes())
        .map_err(io("write"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_private_and_reused() {
        let home = tempfile::tempdir().unwrap();
        let k1 = api_key(home.path(), None).unwrap();
        assert!(k1.starts_with("e2b_") && k1.len() == 44, "{k1}");
        let path = home.path().join("e2b/api-key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(api_key(home.path(), None).unwrap(), k1);
        assert_eq!(api_key(home.path(), Some("given".into())).unwrap(), "given");
        assert_eq!(api_key(home.path(), Some(String::new())).unwrap(), k1);
    }
}
