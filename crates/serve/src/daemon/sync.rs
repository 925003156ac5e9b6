//! Workspace sync of sidecar sessions: the host's `STAGING/LEAF` tree to
//! the guest's `WORKSPACE/LEAF` (push: the guest side becomes an exact
//! copy) and back (pull: every guest file lands on the host, replacing the
//! host's version; host files the guest lacks stay).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cp::copy_in_as;
use crate::error::SessionError;
use crate::wire::SessionErrorCode;
use crate::{copy_out, SessionClient};

/// Whether `leaf` names one directory level (`.` for the workspace itself).
fn check_leaf(leaf: &str) -> Result<(), SessionError> {
    if leaf == ".." || leaf.contains('/') || leaf.contains('\0') || leaf.is_empty() {
        return Err(SessionError::Refused {
            code: SessionErrorCode::BadRequest,
            message: format!("vfs_cwd_leaf `{leaf}` is not a single directory name"),
        });
    }
    Ok(())
}

fn guest_dir(workspace: &str, leaf: &str) -> String {
    if leaf == "." {
        workspace.to_string()
    } else {
        format!("{}/{leaf}", workspace.trim_end_matches('/'))
    }
}

fn host_dir(staging: &Path, leaf: &str) -> PathBuf {
    if leaf == "." {
        staging.to_path_buf()
    } else {
        staging.join(leaf)
    }
}

fn is_not_found(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Refused {
            code: SessionErrorCode::NotFound,
            ..
        }
    )
}

/// Makes the guest's `workspace/leaf` an exact copy of the host's
/// `staging/leaf` (an empty directory when the host has none).
pub(crate) fn push(
    c: &SessionClient,
    staging: &Path,
    workspace: &str,
    leaf: &str,
) -> Result<(), SessionError> {
    check_leaf(leaf)?;
    let src = host_dir(staging, leaf);
    let dst = guest_dir(workspace, leaf);
    match c.remove(&dst, true) {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    c.mkdir_all(workspace, 0o755)?;
    if src.is_dir() {
        // Exactly onto `dst`: with the leaf `.` it is the workspace itself,
        // which exists again by now, and `copy_in` would copy into it.
        copy_in_as(c, &src, &dst)?;
    } else {
        c.mkdir_all(&dst, 0o755)?;
    }
    Ok(())
}

/// Copies the guest's `workspace/leaf` over the host's `staging/leaf`.
pub(crate) fn pull(
    c: &SessionClient,
    staging: &Path,
    workspace: &str,
    leaf: &str,
) -> Result<(), SessionError> {
    check_leaf(leaf)?;
    let src = guest_dir(workspace, leaf);
    match c.stat(&src) {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = staging.join(format!(
        ".nook-pull-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = copy_out(c, &src, &tmp).and_then(|_| merge(&tmp, &host_dir(staging, leaf)));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Moves the tree `src` onto `dst`: directories merge, anything else
/// replaces what `dst` has at that name.
fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> SessionError + 'a {
    move |e| SessionError::io(op, p, e)
}

fn merge(src: &Path, dst: &Path) -> Result<(), SessionError> {
    let dst_meta = std::fs::symlink_metadata(dst).ok();
    let src_is_dir = std::fs::symlink_metadata(src)
        .map_err(io("inspect", src))?
        .is_dir();
    match dst_meta {
        Some(m) if m.is_dir() && src_is_dir => {
            for entry in std::fs::read_dir(src).map_err(io("list", src))? {
                let entry = entry.map_err(io("list", src))?;
                merge(&entry.path(), &dst.join(entry.file_name()))?;
            }
            Ok(())
        }
        Some(m) => {
            if m.is_dir() {
                std::fs::remove_dir_all(dst).map_err(io("replace", dst))?;
            } else {
                std::fs::remove_file(dst).map_err(io("replace", dst))?;
            }
            std::fs::rename(src, dst).map_err(io("move into place", dst))
        }
        None => std::fs::rename(src, dst).map_err(io("move into place", dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_host_only_files_and_replaces_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::create_dir_all(dst.join("d")).unwrap();
        std::fs::write(src.join("d/new"), "new").unwrap();
        std::fs::write(src.join("changed"), "guest").unwrap();
        std::fs::write(dst.join("changed"), "host").unwrap();
        std::fs::write(dst.join("d/host-only"), "h").unwrap();
        std::fs::create_dir(dst.join("was-dir")).unwrap();
        std::fs::write(src.join("was-dir"), "file now").unwrap();
        merge(&src, &dst).unwrap();
        let read = |p: &str| std::fs::read_to_string(dst.join(p)).unwrap();
        assert_eq!(read("d/new"), "new");
        assert_eq!(read("changed"), "guest");
        assert_eq!(read("d/host-only"), "h");
        assert_eq!(read("was-dir"), "file now");
    }

    #[test]
    fn leaves_are_single_names() {
        for good in [".", "proj", "a.b"] {
            assert!(check_leaf(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "a/b", "/etc"] {
            assert!(check_leaf(bad).is_err(), "{bad}");
        }
        assert_eq!(guest_dir("/workspace", "."), "/workspace");
        assert_eq!(guest_dir("/workspace/", "p"), "/workspace/p");
    }
}
