//! File operations in the guest: requests, their replies, and what a file
//! looks like. Each operation uses a stream of its own, like an exec.
//!
//! ```text
//! write:   host File{write}  FileChunk* FileChunk(empty)   guest FileDone{ok}
//! read:    host File{read}                                 guest FileContent* FileDone{read}
//! others:  host File{stat|list|mkdir|remove|symlink}       guest FileDone{...}
//! any failure:                                             guest Error (last frame)
//! ```
//!
//! A write lands atomically: the agent writes a temporary file in the
//! target's directory and renames it over the target after the last chunk.
//! A read returns at most [`MAX_READ`] bytes from an offset: a host reads a
//! large file window by window, so neither side holds it whole and the
//! reader paces the guest.

use serde::{Deserialize, Serialize};

/// Most bytes one `read` request returns.
pub const MAX_READ: u32 = 1024 * 1024;

/// Most entries one `list` reply carries (the rest is reported truncated).
pub const MAX_LIST: usize = 4096;

/// A file operation, the payload of a `File` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileRequest {
    /// Replace `path` with the bytes of the `FileChunk` frames that follow
    /// (an empty one ends them), created with permission bits `mode`.
    Write { path: String, mode: u32 },
    /// Up to `len` bytes (capped at [`MAX_READ`]) of `path` from `offset`.
    Read { path: String, offset: u64, len: u32 },
    /// What `path` is (not following a final symlink).
    Stat { path: String },
    /// The entries of directory `path` (without `.` and `..`), sorted by name.
    List { path: String },
    /// Create directory `path` and its missing parents (`mkdir -p`); the
    /// last one gets permission bits `mode`.
    Mkdir { path: String, mode: u32 },
    /// Remove `path`; a directory only with `recursive` (`rm -r`).
    Remove { path: String, recursive: bool },
    /// Create a symlink at `path` pointing to `target`.
    Symlink { target: String, path: String },
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    #[serde(other)]
    Other,
}

/// One file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// The entry's name in a listing; empty for `stat`.
    #[serde(default)]
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// The last frame of a successful file operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileReply {
    /// write, mkdir, remove, symlink.
    Ok,
    /// A read's window was sent: `sent` bytes in `FileContent` frames; the
    /// file is `size` bytes long now.
    Read {
        size: u64,
        sent: u64,
    },
    Stat(FileStat),
    List {
        entries: Vec<FileStat>,
        /// The directory had more than [`MAX_LIST`] entries.
        #[serde(default)]
        truncated: bool,
    },
}
