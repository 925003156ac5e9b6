//! Paths inside the workspace and the file operations builtins use on it.
//!
//! The shell's paths are *logical*: `/` is the workspace root, `..` never
//! leaves it, and the guest's mount point (`/workspace` by default) names
//! the root too, so a path copied from guest output works in a builtin.

use std::io;

/// A normalized path inside the workspace (its components; none is `.`,
/// `..` or empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WsPath(Vec<String>);

/// A path that would leave the workspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}: outside the workspace")]
pub struct OutsideWorkspace(pub String);

impl WsPath {
    pub fn root() -> WsPath {
        WsPath(Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// `/a/b` (`/` for the root), as the prompt and `pwd` show it.
    pub fn display(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    /// `a/b` (`.` for the root), relative to the workspace root.
    pub fn relative(&self) -> String {
        if self.0.is_empty() {
            ".".into()
        } else {
            self.0.join("/")
        }
    }

    /// The same place under the guest mount `guest_root`.
    pub fn in_guest(&self, guest_root: &str) -> String {
        let root = guest_root.trim_end_matches('/');
        if self.0.is_empty() {
            if root.is_empty() {
                "/".into()
            } else {
                root.into()
            }
        } else {
            format!("{root}/{}", self.0.join("/"))
        }
    }

    /// The last component (`None` for the root).
    pub fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    pub fn parent(&self) -> Option<WsPath> {
        let mut p = self.0.clone();
        p.pop()?;
        Some(WsPath(p))
    }

    /// `self/name` for a single, plain component.
    pub fn child(&self, name: &str) -> WsPath {
        let mut p = self.0.clone();
        p.push(name.to_string());
        WsPath(p)
    }

    /// Resolves `arg` against `self` (the cwd): an absolute `arg` starts at
    /// the workspace root, or at `guest_root` when it names the guest's
    /// mount point; `..` past the root is refused.
    pub fn resolve(&self, arg: &str, guest_root: &str) -> Result<WsPath, OutsideWorkspace> {
        let guest_root = guest_root.trim_end_matches('/');
        let (mut parts, rest) = if let Some(rest) = strip_dir_prefix(arg, guest_root) {
            (Vec::new(), rest)
        } else if let Some(rest) = arg.strip_prefix('/') {
            (Vec::new(), rest)
        } else {
            (self.0.clone(), arg)
        };
        for c in rest.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(OutsideWorkspace(arg.to_string()));
                    }
                }
                c => parts.push(c.to_string()),
            }
        }
        Ok(WsPath(parts))
    }
}

/// `path` without the directory prefix `dir` (`/workspace/a` → `a`).
fn strip_dir_prefix<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    if dir.is_empty() {
        return None;
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// What a workspace path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// The file operations builtins need, on the host copy of the workspace
/// (sync mode) or on the guest's (guest-primary mode).
pub trait WorkspaceFs {
    fn read(&mut self, p: &WsPath) -> io::Result<Vec<u8>>;
    /// Creates or replaces (or appends to) a file.
    fn write(&mut self, p: &WsPath, data: &[u8], append: bool) -> io::Result<()>;
    /// What `p` is (a final symlink followed), `None` when it is absent.
    fn kind(&mut self, p: &WsPath) -> io::Result<Option<EntryKind>>;
    /// A directory's entries, sorted by name.
    fn list(&mut self, p: &WsPath) -> io::Result<Vec<Entry>>;
    /// `mkdir` (`-p` with `parents`).
    fn mkdir(&mut self, p: &WsPath, parents: bool) -> io::Result<()>;
    /// `rm` (`-r` with `recursive`).
    fn remove(&mut self, p: &WsPath, recursive: bool) -> io::Result<()>;
    fn rename(&mut self, from: &WsPath, to: &WsPath) -> io::Result<()>;
    /// Creates an empty file or updates the time of an existing one.
    fn touch(&mut self, p: &WsPath) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_workspace() {
        let cwd = WsPath::root().resolve("demo/hello", "/workspace").unwrap();
        assert_eq!(cwd.display(), "/demo/hello");
        assert_eq!(cwd.relative(), "demo/hello");
        assert_eq!(cwd.in_guest("/workspace"), "/workspace/demo/hello");
        assert_eq!(cwd.resolve("..", "/workspace").unwrap().display(), "/demo");
        assert_eq!(
            cwd.resolve("./a/../b", "/workspace").unwrap().display(),
            "/demo/hello/b"
        );
        assert_eq!(cwd.resolve("/x", "/workspace").unwrap().display(), "/x");
        assert_eq!(
            cwd.resolve("/workspace/y", "/workspace").unwrap().display(),
            "/y"
        );
        assert_eq!(
            cwd.resolve("/workspace", "/workspace").unwrap(),
            WsPath::root()
        );
        // Only the whole component counts: /workspaces is a workspace path.
        assert_eq!(
            cwd.resolve("/workspaces", "/workspace").unwrap().display(),
            "/workspaces"
        );
        assert!(cwd.resolve("../../..", "/workspace").is_err());
        assert!(WsPath::root().resolve("..", "/workspace").is_err());
        assert!(WsPath::root().resolve("/../etc", "/workspace").is_err());
        assert_eq!(WsPath::root().in_guest("/workspace/"), "/workspace");
    }
}
