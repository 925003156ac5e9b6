//! The layer member path sanitizer: turns a tar member name into a list of
//! plain components below the root, or refuses it.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Longest member path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component accepted (ext4's limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a member path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` would climb out of the root.
    #[error("member path {0:?} contains '..'")]
    ParentDir(String),
    /// Absolute member paths are not allowed in layers.
    #[error("member path {0:?} is absolute")]
    Absolute(String),
    /// NUL bytes never belong in a path.
    #[error("member path {0:?} contains a NUL byte")]
    Nul(String),
    /// Longer than [`MAX_PATH_BYTES`] or a component longer than [`MAX_NAME_BYTES`].
    #[error("member path {0:?} is too long")]
    TooLong(String),
}

/// A member path below the root: non-dot, non-empty components, no `/`.
/// Empty means the root itself (`./`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberPath {
    components: Vec<Vec<u8>>,
}

impl MemberPath {
    /// Sanitizes a raw tar member name.
    pub fn parse(raw: &[u8]) -> Result<MemberPath, PathError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(shown()));
        }
        if raw.first() == Some(&b'/') {
            return Err(PathError::Absolute(shown()));
        }
        let mut components = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(PathError::ParentDir(shown())),
                name if name.len() > MAX_NAME_BYTES => return Err(PathError::TooLong(shown())),
                name => components.push(name.to_vec()),
            }
        }
        Ok(MemberPath { components })
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The components, root first.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.components.iter().map(|c| OsStr::from_bytes(c))
    }

    /// The raw components, root first.
    pub(crate) fn raw_components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// All components but the last.
    pub fn parent_components(&self) -> &[Vec<u8>] {
        match self.components.split_last() {
            Some((_, parent)) => parent,
            None => &[],
        }
    }

    /// The last component, if any.
    pub fn file_name(&self) -> Option<&OsStr> {
        self.components.last().map(|c| OsStr::from_bytes(c))
    }

    /// The path of the parent, or `None` for the root.
    pub fn parent(&self) -> Option<MemberPath> {
        let (_, parent) = self.components.split_last()?;
        Some(MemberPath {
            components: parent.to_vec(),
        })
    }

    /// This path with one more component.
    pub fn join(&self, name: &[u8]) -> MemberPath {
        let mut components = self.components.clone();
        components.push(name.to_vec());
        MemberPath { components }
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &MemberPath) -> bool {
        self.components.starts_with(&other.components)
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components.len()
    }
}

impl fmt::Display for MemberPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{}", String::from_utf8_lossy(c))?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemberPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> String {
        MemberPath::parse(s.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn normalises_plain_paths() {
        assert_eq!(ok("./etc/passwd"), "/etc/passwd");
        assert_eq!(ok("etc//./x/"), "/etc/x");
        assert_eq!(ok("./"), "/");
        assert!(MemberPath::parse(b".").unwrap().is_root());
        assert_eq!(ok("a/..b/c.."), "/a/..b/c..");
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(
            MemberPath::parse(b"../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            MemberPath::parse(b"a/../../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            MemberPath::parse(b"a/.."),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            MemberPath::parse(b"/etc/x"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(MemberPath::parse(b"a\0b"), Err(PathError::Nul(_))));
        let long = "a".repeat(256);
        assert!(matches!(
            MemberPath::parse(long.as_bytes()),
            Err(PathError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn sanitizer_never_panics_and_never_escapes(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = MemberPath::parse(&raw) {
                for c in p.components() {
                    let b = c.as_bytes();
                    prop_assert!(!b.is_empty());
                    prop_assert!(b != b"." && b != b"..");
                    prop_assert!(!b.contains(&b'/') && !b.contains(&0));
                }
                let _ = p.to_string();
            }
        }

        #[test]
        fn sanitizer_on_path_like_strings(raw in "(\\.{0,3}/?|[a-z]{1,3}/|/){0,12}") {
            let parsed = MemberPath::parse(raw.as_bytes());
            let has_dotdot = raw.split('/').any(|c| c == "..");
            if has_dotdot || raw.starts_with('/') {
                prop_assert!(parsed.is_err());
            } else {
                prop_assert!(parsed.is_ok());
            }
        }
    }
}
