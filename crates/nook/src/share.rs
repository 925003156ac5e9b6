//! Host directory shares: what the user asks for, and how the guest learns
//! where to mount them.
//!
//! Each share becomes a virtio-fs device tagged `nookN` (N = its index) and
//! a boot word ([`nook_proto::ShareMount`], `nook.share=TAG:PATH:MODE`) that
//! the agent turns into `mount -t virtiofs TAG PATH` after loading modules.
//! See docs/protocol.md.

use std::path::PathBuf;
use std::str::FromStr;

/// A host directory to expose in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub host_dir: PathBuf,
    /// Where the guest sees it (absolute).
    pub guest_path: String,
    /// Nothing in it can be changed from the guest (enforced on the host).
    pub read_only: bool,
}

impl FromStr for ShareConfig {
    type Err = String;

    /// `HOST:GUEST`, `HOST:GUEST:ro` or `HOST:GUEST:rw`. The host path is
    /// made absolute against the current directory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, read_only) = if let Some(r) = s.strip_suffix(":ro") {
            (r, true)
        } else if let Some(r) = s.strip_suffix(":rw") {
            (r, false)
        } else {
            (s, false)
        };
        let Some((host, guest)) = rest.rsplit_once(':') else {
            return Err(format!("expected HOST_DIR:GUEST_PATH[:ro], got `{s}`"));
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("expected HOST_DIR:GUEST_PATH[:ro], got `{s}`"));
        }
        let host = std::path::absolute(host).map_err(|e| format!("share `{host}`: {e}"))?;
        Ok(ShareConfig {
            host_dir: host,
            guest_path: guest.to_owned(),
            read_only,
        })
    }
}

impl ShareConfig {
    /// This share with its host directory resolved once, symlinks
    /// followed, to the directory the VM will serve: a share given through
    /// a symlink (`$PWD` reached through one, `--share link:/work`) shares
    /// the directory it points to. Anything but a directory is refused.
    pub fn resolved(&self) -> Result<ShareConfig, crate::VmError> {
        let refuse = |reason: String| crate::VmError::ShareHost {
            path: self.host_dir.clone(),
            reason,
        };
        let dir = std::fs::canonicalize(&self.host_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => refuse("it does not exist".into()),
            _ => refuse(e.to_string()),
        })?;
        if !dir.is_dir() {
            return Err(refuse(format!(
                "{} is not a directory (a share must be a directory)",
                dir.display()
            )));
        }
        Ok(ShareConfig {
            host_dir: dir,
            ..self.clone()
        })
    }

    pub(crate) fn validate(&self) -> Result<(), crate::VmError> {
        let bad = |reason| Err(crate::VmError::Config(reason));
        if !self.host_dir.is_dir() {
            return bad("a share's host directory must exist and be a directory");
        }
        let g = &self.guest_path;
        if !g.starts_with('/') || g == "/" {
            return bad("a share's guest path must be absolute and not `/`");
        }
        if g.split('/').any(|c| c == ".." || c == ".") {
            return bad("a share's guest path must not contain `.` or `..`");
        }
        if g.len() > 1024 || g.contains('\0') {
            return bad("a share's guest path must be at most 1024 bytes, without NUL");
        }
        Ok(())
    }
}

/// The virtio-fs tag of the share at `index`.
pub(crate) fn tag(index: usize) -> String {
    format!("nook{index}")
}

/// The boot word that mounts the share at `index` in the guest.
pub(crate) fn boot_mount(index: usize, share: &ShareConfig) -> nook_proto::ShareMount {
    nook_proto::ShareMount {
        tag: tag(index),
        path: share.guest_path.clone(),
        read_only: share.read_only,
    }
}

/// The nook-fs shares for the engine, tagged by position.
pub(crate) fn fs_shares(shares: &[ShareConfig]) -> Vec<nook_fs::Share> {
    shares
        .iter()
        .enumerate()
        .map(|(i, s)| fs_share(i, s))
        .collect()
}

/// The nook-fs share for the engine.
pub(crate) fn fs_share(index: usize, share: &ShareConfig) -> nook_fs::Share {
    nook_fs::Share {
        host_dir: share.host_dir.clone(),
        tag: tag(index),
        read_only: share.read_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_guest_and_mode() {
        let s: ShareConfig = "/srv/data:/mnt/data:ro".parse().unwrap();
        assert_eq!(s.host_dir, PathBuf::from("/srv/data"));
        assert_eq!(s.guest_path, "/mnt/data");
        assert!(s.read_only);
        let s: ShareConfig = "/a:/b".parse().unwrap();
        assert!(!s.read_only);
        let s: ShareConfig = "/a:/b:rw".parse().unwrap();
        assert!(!s.read_only);
        let s: ShareConfig = "rel:/b".parse().unwrap();
        assert!(s.host_dir.is_absolute());
        for bad in ["/a", "/a:", ":/b", ":ro", ""] {
            assert!(bad.parse::<ShareConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn guest_paths_are_absolute_and_plain() {
        let mut s: ShareConfig = "/:/mnt".parse().unwrap();
        s.validate().unwrap();
        for bad in ["mnt", "/", "/a/../etc", "/a/./b"] {
            s.guest_path = bad.into();
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_resolve_through_symlinks_and_must_be_directories() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("file"), dir.path().join("flink")).unwrap();
        let share = |host: &str| ShareConfig {
            host_dir: dir.path().join(host),
            guest_path: "/work".into(),
            read_only: false,
        };
        let r = share("link").resolved().unwrap();
        assert_eq!(r.host_dir, real.canonicalize().unwrap());
        let e = share("flink").resolved().unwrap_err().to_string();
        assert!(
            e.contains("flink") && e.contains("must be a directory"),
            "{e}"
        );
        let e = share("nothing").resolved().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn boot_mount_tags_by_index() {
        let s = ShareConfig {
            host_dir: "/h".into(),
            guest_path: "/mnt/my dir".into(),
            read_only: true,
        };
        let m = boot_mount(2, &s);
        assert_eq!(
            (m.tag.as_str(), m.path.as_str(), m.read_only),
            ("nook2", "/mnt/my dir", true)
        );
        assert_eq!(fs_share(2, &s).tag, m.tag);
    }
}
