//! What a share is, validated once.

use std::path::PathBuf;

use crate::error::FsError;

/// Longest tag virtio-fs carries (the device config's `tag` field is 36
/// bytes).
pub const MAX_TAG_LEN: usize = 36;

/// A host directory exposed to a guest through virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The host directory (absolute). The guest sees this directory and
    /// nothing above it.
    pub host_dir: PathBuf,
    /// The name the guest mounts it by (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// Refuse every mutation on the host side (EROFS), whatever the guest
    /// mounts it as.
    pub read_only: bool,
}

impl Share {
    /// What a thread serving this share may reach under Landlock: the
    /// directory and everything beneath it, writable unless read-only.
    pub fn reach(&self) -> nook_seccomp::FsReach {
        nook_seccomp::FsReach {
            path: self.host_dir.clone(),
            write: !self.read_only,
        }
    }

    /// Checks the tag and that the host directory is an absolute path to a
    /// directory.
    pub fn validate(&self) -> Result<(), FsError> {
        if self.tag.is_empty() || self.tag.len() > MAX_TAG_LEN {
            return Err(FsError::InvalidShare {
                field: "tag",
                reason: "must be 1 to 36 bytes",
            });
        }
        if !self
            .tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(FsError::InvalidShare {
                field: "tag",
                reason: "may only contain ASCII letters, digits, '-', '_' and '.'",
            });
        }
        if !self.host_dir.is_absolute() {
            return Err(FsError::InvalidShare {
                field: "host_dir",
                reason: "must be an absolute path",
            });
        }
        match std::fs::metadata(&self.host_dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(FsError::OpenDir {
                path: self.host_dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            }),
            Err(source) => Err(FsError::OpenDir {
                path: self.host_dir.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, dir: &str) -> Share {
        Share {
            host_dir: dir.into(),
            tag: tag.into(),
            read_only: false,
        }
    }

    #[test]
    fn tags_are_short_and_plain() {
        assert!(share("share0", "/").validate().is_ok());
        assert!(share("a.b-c_d", "/").validate().is_ok());
        for bad in ["", "a b", "a,b", "a/b", "é", &"x".repeat(37)] {
            assert!(
                matches!(
                    share(bad, "/").validate(),
                    Err(FsError::InvalidShare { field: "tag", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn host_dir_must_be_an_absolute_directory() {
        assert!(matches!(
            share("t", "relative").validate(),
            Err(FsError::InvalidShare {
                field: "host_dir",
                ..
            })
        ));
        assert!(matches!(
            share("t", "/no/such/dir/for/nook").validate(),
            Err(FsError::OpenDir { .. })
        ));
        assert!(matches!(
            share("t", "/proc/self/status").validate(),
            Err(FsError::OpenDir { .. })
        ));
    }
}
