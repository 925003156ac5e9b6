//! Host directory shares: what the user asks for, and how the guest learns
//! where to mount them.
//!
//! Each share becomes a virtio-fs device tagged `nookN` (N = its index) and
//! a kernel command line word `nook.share=TAG:PATH:MODE` (PATH
//! percent-encoded, MODE `ro` or `rw`) that the agent turns into
//! `mount -t virtiofs TAG PATH` after loading modules. See docs/protocol.md.

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

/// The kernel command line word for the share at `index`.
pub(crate) fn cmdline_word(index: usize, share: &ShareConfig) -> String {
    format!(
        "nook.share={}:{}:{}",
        tag(index),
        percent_encode(&share.guest_path),
        if share.read_only { "ro" } else { "rw" }
    )
}

/// Encodes every byte but `[A-Za-z0-9/._-]` as `%XX`: the result has no
/// spaces, quotes or colons to confuse the kernel command line or the word's
/// own fields.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    fn cmdline_word_encodes_the_path() {
        let s = ShareConfig {
            host_dir: "/h".into(),
            guest_path: "/mnt/my dir:x%\"".into(),
            read_only: true,
        };
        assert_eq!(
            cmdline_word(2, &s),
            "nook.share=nook2:/mnt/my%20dir%3Ax%25%22:ro"
        );
    }
}
