//! The tools' arguments and results: typed, with JSON schemas derived by
//! schemars (the doc comments become the fields' descriptions), and the
//! checks serde cannot make.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ToolError;

/// Longest `timeout_s` accepted: a week.
const MAX_TIMEOUT_S: f64 = 7.0 * 24.0 * 3600.0;

/// `run`: one shell command in a fresh VM.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Shell command line, run as `/bin/sh -c COMMAND` (pipes, `&&`, redirections work).
    pub command: String,
    /// Image to boot: an OCI reference such as `python:3.12-slim` (pulled into nook's store on first use) or an image already in the store. Default: nook's minimal busybox root.
    #[serde(default)]
    pub image: Option<String>,
    /// Kill the command's whole process group after this many seconds; the result then has `timed_out: true` and `exit_code` 124.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory in the guest (absolute path).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Text given to the command on standard input (else stdin is empty).
    #[serde(default)]
    pub stdin: Option<String>,
}

/// A host directory shared into a sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareArg {
    /// Host directory (absolute; must lie under a directory the user allowed with `nook mcp --allow-share`).
    pub host_dir: String,
    /// Where the guest sees it (absolute path).
    pub guest_path: String,
    /// The guest cannot change anything in it.
    #[serde(default)]
    pub read_only: bool,
}

/// `sandbox_create`: a VM that stays up for many commands.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxCreateArgs {
    /// Image to boot (as for `run`). Default: nook's minimal busybox root.
    #[serde(default)]
    pub image: Option<String>,
    /// Guest memory in MiB (default: the server's, 256 unless `nook mcp --memory` says otherwise).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Number of vCPUs (default: the server's, 1).
    #[serde(default)]
    pub cpus: Option<u8>,
    /// Host directories to share into the sandbox (only under directories the user allowed).
    #[serde(default)]
    pub share: Option<Vec<ShareArg>>,
    /// Stop the sandbox after this many seconds with no command running (default 900).
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
}

/// `sandbox_exec`: a shell command in a sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxExecArgs {
    /// The sandbox, as `sandbox_create` returned it.
    pub sandbox_id: String,
    /// Shell command line, run as `/bin/sh -c COMMAND`. Files and processes persist between calls; shell variables and `cd` do not (use `workdir`, `env`).
    pub command: String,
    /// Kill the command's whole process group after this many seconds (`timed_out: true`, `exit_code` 124).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory in the guest (absolute path).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Text given to the command on standard input (else stdin is empty).
    #[serde(default)]
    pub stdin: Option<String>,
}

/// `file_write`: create or replace a file in a sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileWriteArgs {
    pub sandbox_id: String,
    /// Absolute guest path; missing parent directories are created.
    pub path: String,
    /// The file's text (UTF-8). Give this or `content_base64`.
    #[serde(default)]
    pub content: Option<String>,
    /// The file's bytes, base64-encoded (for binary files). Give this or `content`.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Permission bits in octal, e.g. "755" (default "644").
    #[serde(default)]
    pub mode: Option<String>,
}

/// `file_read`: a file's contents.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileReadArgs {
    pub sandbox_id: String,
    /// Absolute guest path.
    pub path: String,
}

/// `file_list`: a directory's entries.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListArgs {
    pub sandbox_id: String,
    /// Absolute guest path of a directory.
    pub path: String,
}

/// `sandbox_snapshot`: save a sandbox's VM as a named snapshot.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSnapshotArgs {
    pub sandbox_id: String,
    /// Snapshot name: letters, digits, `-`, `_`, `.` (not starting with `.`).
    pub name: String,
}

/// `sandbox_list`: no arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxListArgs {}

/// `sandbox_destroy`: stop and remove a sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxDestroyArgs {
    pub sandbox_id: String,
}

/// How a command ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    /// The command's exit code; 124 when it timed out, 128+N when signal N killed it.
    pub exit_code: i32,
    /// Output past the server's per-call cap was dropped.
    pub truncated: bool,
    /// How many output bytes were dropped.
    pub dropped_bytes: u64,
    /// The timeout passed and the command's process group was killed.
    pub timed_out: bool,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
}

/// A new sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxCreated {
    /// Pass this to the other sandbox tools.
    pub sandbox_id: String,
    pub engine: String,
    pub memory_mib: u32,
    pub cpus: u8,
    pub idle_timeout_s: u64,
}

/// A written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileWritten {
    pub path: String,
    pub bytes: u64,
    pub mode: String,
}

/// A file's contents: `content` when it is UTF-8 text, else `content_base64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// The file's whole size in bytes.
    pub size: u64,
    /// Only the first bytes (the server's per-call cap) were returned.
    pub truncated: bool,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Other,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
}

/// A directory's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntries {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// The directory has more entries than one listing returns.
    pub truncated: bool,
}

/// A snapshot taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotTaken {
    pub sandbox_id: String,
    pub name: String,
    /// Its directory on the host.
    pub path: String,
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    pub sandbox_id: String,
    /// `starting` or `running`.
    pub state: String,
    pub engine: String,
    pub image: Option<String>,
    pub memory_mib: u32,
    pub cpus: u8,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// This client created it (it is destroyed when the client disconnects).
    pub owned: bool,
}

/// The running sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// A destroyed sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxDestroyed {
    pub sandbox_id: String,
}

/// `timeout_s` as a duration: finite, above zero, at most a week.
pub fn check_timeout(timeout_s: Option<f64>) -> Result<Option<Duration>, ToolError> {
    match timeout_s {
        None => Ok(None),
        Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_S => {
            Ok(Some(Duration::from_secs_f64(t)))
        }
        Some(t) => Err(ToolError::Argument {
            field: "timeout_s",
            reason: format!("{t} is not a number of seconds above 0 and at most {MAX_TIMEOUT_S}"),
        }),
    }
}

/// An absolute guest path.
pub fn check_guest_path(field: &'static str, path: &str) -> Result<(), ToolError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ToolError::Argument {
            field,
            reason: format!("`{path}` is not an absolute guest path: write it as /dir/name"),
        });
    }
    Ok(())
}

/// Environment pairs: names non-empty, without `=` or NUL.
pub fn check_env(
    env: Option<BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, ToolError> {
    let env = env.unwrap_or_default();
    for (k, v) in &env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ToolError::Argument {
                field: "env",
                reason: format!("`{k}` is not a variable name (non-empty, no `=`)"),
            });
        }
    }
    Ok(env.into_iter().collect())
}

/// Octal permission bits (`"644"`, `"0755"`), default 0644.
pub fn check_mode(mode: Option<&str>) -> Result<u32, ToolError> {
    let Some(m) = mode else {
        return Ok(0o644);
    };
    let bad = || ToolError::Argument {
        field: "mode",
        reason: format!("`{m}` is not octal permission bits such as \"644\" or \"755\""),
    };
    if m.is_empty() || m.len() > 5 {
        return Err(bad());
    }
    let bits = u32::from_str_radix(m, 8).map_err(|_| bad())?;
    if bits > 0o7777 {
        return Err(bad());
    }
    Ok(bits)
}

/// The bytes `file_write` writes: exactly one of `content`, `content_base64`.
pub fn file_bytes(args: &FileWriteArgs) -> Result<Vec<u8>, ToolError> {
    match (&args.content, &args.content_base64) {
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(b64)) => nook_serve::wire::decode_bytes(b64).map_err(|e| ToolError::Argument {
            field: "content_base64",
            reason: format!("not base64: {e}"),
        }),
        _ => Err(ToolError::Argument {
            field: "content",
            reason: "give exactly one of `content` (text) and `content_base64` (bytes)".into(),
        }),
    }
}

/// A read file's bytes as `content` (UTF-8, a cut-off last character
/// left out) or else `content_base64`.
pub fn file_content(mut bytes: Vec<u8>, size: u64, truncated: bool) -> FileContent {
    if truncated {
        if let Err(e) = std::str::from_utf8(&bytes) {
            // Only a character cut in half at the end: drop its first bytes.
            if e.error_len().is_none() {
                bytes.truncate(e.valid_up_to());
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => FileContent {
            content: Some(text),
            content_base64: None,
            size,
            truncated,
        },
        Err(e) => FileContent {
            content: None,
            content_base64: Some(nook_serve::wire::encode_bytes(e.as_bytes())),
            size,
            truncated,
        },
    }
}

impl From<nook::FileKind> for EntryType {
    fn from(k: nook::FileKind) -> EntryType {
        match k {
            nook::FileKind::File => EntryType::File,
            nook::FileKind::Dir => EntryType::Dir,
            nook::FileKind::Symlink => EntryType::Symlink,
            nook::FileKind::Other => EntryType::Other,
        }
    }
}
