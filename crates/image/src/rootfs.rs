//! Turns an unpacked root directory into a read-only ext4 image file with
//! `mkfs.ext4 -d`, sized to fit.
//!
//! Why ext4: the guest kernel (Debian cloud 6.1) has ext4 built in, so the
//! root disk mounts before any module is loaded; squashfs and overlay are
//! modules, erofs is not shipped. The image has no journal and no reserved
//! blocks (it is only ever mounted read-only under an overlay), and
//! `mkfs.ext4 -d` keeps modes, owners (when run as root), times, xattrs,
//! symlinks, hard links and device nodes.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::error::{io_err, ImageError};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const BLOCKS_PER_GROUP: u64 = 32768;

/// What a tree needs from a file system.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeUsage {
    /// Inodes (hard links counted once).
    pub inodes: u64,
    /// Data blocks, directories and long symlinks included.
    pub blocks: u64,
}

/// Measures `root` without following symlinks.
pub fn measure_tree(root: &Path) -> Result<TreeUsage, ImageError> {
    let mut usage = TreeUsage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        usage.inodes += 1;
        let mut entries = 0u64;
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            entries += 1;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.inodes += 1;
            if ft.is_file() {
                // Data blocks plus one extent-tree block for every 128 MiB.
                usage.blocks += meta.len().div_ceil(BLOCK) + meta.len() / (128 << 20);
            } else if ft.is_symlink() && meta.len() >= 60 {
                usage.blocks += 1;
            }
        }
        // A directory entry takes 8 bytes plus the name rounded up; 40 is
        // a fair average, and each directory has at least one block.
        usage.blocks += (entries * 40).div_ceil(BLOCK).max(1);
    }
    Ok(usage)
}

/// Size in blocks for a file system that holds `usage`.
fn initial_blocks(usage: TreeUsage, inodes: u64) -> u64 {
    let inode_table = (inodes * INODE_SIZE).div_ceil(BLOCK);
    let data = usage.blocks + usage.blocks / 50;
    let base = data + inode_table + 64;
    // Each 128 MiB group carries a block bitmap, an inode bitmap and a
    // share of descriptors; lost+found and the superblock are in the 64.
    let groups = base.div_ceil(BLOCKS_PER_GROUP);
    base + groups * 4 + 256
}

/// Builds `out` (an ext4 image) from the tree at `root`; returns its size
/// in bytes.
pub fn build_ext4(root: &Path, out: &Path, label: &str) -> Result<u64, ImageError> {
    let usage = measure_tree(root)?;
    let inodes = usage.inodes + 64;
    let mut blocks = initial_blocks(usage, inodes);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let file = File::create(out).map_err(io_err("create", out))?;
        file.set_len(blocks * BLOCK).map_err(io_err("size", out))?;
        drop(file);
        let result = Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args(["-O", "^has_journal,^resize_inode", "-E", "root_owner=0:0"])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-L")
            .arg(label)
            .arg("-d")
            .arg(root)
            .arg(out)
            .env("LC_ALL", "C")
            .output();
        let output = match result {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::ToolMissing {
                    tool: "mkfs.ext4",
                    package: "e2fsprogs",
                })
            }
            Err(e) => return Err(io_err("run mkfs.ext4 for", out)(e)),
        };
        if output.status.success() {
            tracing::debug!(?usage, blocks, attempt, "image: built ext4 root");
            return Ok(blocks * BLOCK);
        }
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let out_of_space = ["Could not allocate", "No space", "allocate block", "inode"]
            .iter()
            .any(|needle| text.contains(needle));
        if !out_of_space || attempt >= 5 {
            let _ = fs::remove_file(out);
            return Err(ImageError::Tool {
                tool: "mkfs.ext4",
                task: format!("build {} from {}", out.display(), root.display()),
                status: output.status,
                output: tail(&text, 2000),
            });
        }
        tracing::debug!(blocks, "image: ext4 estimate too small, growing");
        blocks += blocks / 3 + 1024;
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_an_image_that_holds_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc/deep/er")).unwrap();
        fs::write(root.join("etc/marker"), b"marker\n").unwrap();
        fs::write(root.join("big"), vec![1u8; 3 << 20]).unwrap();
        for i in 0..300 {
            fs::write(root.join(format!("etc/deep/f{i}")), b"x").unwrap();
        }
        fs::hard_link(root.join("big"), root.join("big2")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/dash", root.join("sh")).unwrap();
        let usage = measure_tree(&root).unwrap();
        assert_eq!(usage.inodes, 3 + 1 + 300 + 1 + 1 + 1); // dirs, marker, files, big, sh, root dir
        let out = t.path().join("root.ext4");
        let size = match build_ext4(&root, &out, "test") {
            Err(ImageError::ToolMissing { .. }) => {
                eprintln!("skipping: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(fs::metadata(&out).unwrap().len(), size);
        assert!(size < 16 << 20, "image of a 3 MiB tree is {size} bytes");
    }

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("ab", 10), "ab");
    }
}
