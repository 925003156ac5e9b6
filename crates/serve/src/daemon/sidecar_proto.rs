//! The `devshell-vm` sidecar protocol (β backend of the xtask_todo dev
//! shell), spoken on the daemon's socket by connections whose first line
//! carries an `op` field: one JSON line per request, exactly one per reply.
//! Fields a client adds beyond these (`client`, `backend`, `stop_vm`, ...)
//! are accepted and ignored. See docs/daemon.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The sidecar protocol's version.
pub const SIDECAR_PROTOCOL_VERSION: u32 = 1;

/// Requests, by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SidecarRequest {
    Handshake {
        version: u32,
    },
    SessionStart {
        session_id: String,
        /// Host directory the client writes its workspace into.
        staging_dir: String,
        /// Where the workspace lives in the guest (`/workspace`).
        #[serde(default = "default_workspace")]
        guest_workspace: String,
    },
    SyncRequest {
        session_id: String,
        direction: SyncDirection,
        #[serde(default = "default_leaf")]
        vfs_cwd_leaf: String,
    },
    Exec {
        session_id: String,
        #[serde(default)]
        guest_cwd: Option<String>,
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    GuestFs {
        session_id: String,
        operation: GuestFsOperation,
        guest_path: String,
        #[serde(default)]
        content_base64: Option<String>,
    },
    SessionShutdown {
        session_id: String,
    },
}

fn default_workspace() -> String {
    "/workspace".into()
}

fn default_leaf() -> String {
    ".".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    PushToGuest,
    PullFromGuest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestFsOperation {
    ListDir,
    ReadFile,
    WriteFile,
    Mkdir,
    Remove,
}

/// `guest_fs_error` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestFsCode {
    NotFound,
    NotADirectory,
    IsADirectory,
    InvalidPath,
    IoError,
}

/// `error` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SidecarErrorCode {
    /// Not JSON, or a known op without the fields it needs.
    Parse,
    UnknownOp,
    /// No session with that `session_id` (send `session_start` first).
    NoSession,
    /// The command ran past `timeout_ms`; its process group was killed.
    ExecTimeout,
    /// The command could not be started (empty argv, not found, ...).
    Exec,
    /// `guest_cwd` is outside the guest workspace.
    BadGuestCwd,
    /// The VM or the session failed.
    Vm,
    /// A sync could not copy.
    Sync,
    /// The line is longer than the daemon accepts.
    LineTooLong,
}

/// Replies, by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SidecarReply {
    HandshakeOk {
        version: u32,
        server: String,
        server_version: String,
    },
    SessionOk {
        session_id: String,
    },
    SyncOk {
        session_id: String,
    },
    ExecResult {
        session_id: String,
        exit_code: i32,
        signal: Option<i32>,
    },
    GuestFsOk {
        session_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        names: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_base64: Option<String>,
    },
    GuestFsError {
        code: GuestFsCode,
        message: String,
    },
    ShutdownOk {
        session_id: String,
    },
    Error {
        code: SidecarErrorCode,
        message: String,
    },
}

const OPS: &[&str] = &[
    "handshake",
    "session_start",
    "sync_request",
    "exec",
    "guest_fs",
    "session_shutdown",
];

/// Parses one sidecar line; the error is the reply to send. Pure: a fuzz
/// target's entry point.
pub fn parse_sidecar_request(line: &[u8]) -> Result<SidecarRequest, SidecarReply> {
    let err = |code, message: String| SidecarReply::Error { code, message };
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| err(SidecarErrorCode::Parse, e.to_string()))?;
    let op = v.get("op").and_then(|o| o.as_str()).unwrap_or_default();
    if !OPS.contains(&op) {
        return Err(err(
            SidecarErrorCode::UnknownOp,
            format!("unknown op `{op}`"),
        ));
    }
    let op = op.to_string();
    serde_json::from_value(v).map_err(|e| err(SidecarErrorCode::Parse, format!("{op}: {e}")))
}

/// Resolves guest path `p` lexically (`.` and `..`, relative to
/// `workspace`) and returns it when it stays inside `workspace`.
pub fn resolve_in_workspace(workspace: &str, p: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if p.starts_with('/') {
        p
    } else {
        joined = format!("{workspace}/{p}");
        &joined
    };
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let resolved = format!("/{}", parts.join("/"));
    let ws = workspace.trim_end_matches('/');
    let ws = if ws.is_empty() { "/" } else { ws };
    let inside = ws == "/" || resolved == ws || resolved.starts_with(&format!("{ws}/"));
    inside.then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::to_line;

    #[test]
    fn frozen_samples() {
        let samples: Vec<(Vec<u8>, &str)> = vec![
            (
                to_line(&SidecarReply::HandshakeOk {
                    version: 1,
                    server: "nook".into(),
                    server_version: "0.1.0".into(),
                }),
                r#"{"op":"handshake_ok","version":1,"server":"nook","server_version":"0.1.0"}"#,
            ),
            (
                to_line(&SidecarReply::SessionOk {
                    session_id: "s".into(),
                }),
                r#"{"op":"session_ok","session_id":"s"}"#,
            ),
            (
                to_line(&SidecarReply::ExecResult {
                    session_id: "s".into(),
                    exit_code: 137,
                    signal: Some(9),
                }),
                r#"{"op":"exec_result","session_id":"s","exit_code":137,"signal":9}"#,
            ),
            (
                to_line(&SidecarReply::GuestFsOk {
                    session_id: "s".into(),
                    names: Some(vec!["a".into()]),
                    content_base64: None,
                }),
                r#"{"op":"guest_fs_ok","session_id":"s","names":["a"]}"#,
            ),
            (
                to_line(&SidecarReply::GuestFsError {
                    code: GuestFsCode::InvalidPath,
                    message: "m".into(),
                }),
                r#"{"op":"guest_fs_error","code":"invalid_path","message":"m"}"#,
            ),
            (
                to_line(&SidecarReply::Error {
                    code: SidecarErrorCode::ExecTimeout,
                    message: "m".into(),
                }),
                r#"{"op":"error","code":"exec_timeout","message":"m"}"#,
            ),
            (
                to_line(&SidecarReply::ShutdownOk {
                    session_id: "s".into(),
                }),
                r#"{"op":"shutdown_ok","session_id":"s"}"#,
            ),
        ];
        for (line, want) in samples {
            assert_eq!(String::from_utf8(line).unwrap(), format!("{want}\n"));
        }
    }

    /// The lines the xtask_todo β client sends, extra fields included.
    #[test]
    fn client_lines_parse() {
        let lines: &[&str] = &[
            r#"{"op":"handshake","version":1,"client":"cargo-devshell","client_version":"0.1"}"#,
            r#"{"op":"session_start","session_id":"pid-7","staging_dir":"/tmp/s","guest_workspace":"/workspace","backend":"beta-stub","backend_config":{}}"#,
            r#"{"op":"sync_request","session_id":"pid-7","direction":"push_to_guest","vfs_cwd_leaf":"proj"}"#,
            r#"{"op":"exec","session_id":"pid-7","guest_cwd":"/workspace/proj","argv":["cargo","build"],"env":{},"timeout_ms":5}"#,
            r#"{"op":"guest_fs","session_id":"pid-7","operation":"write_file","guest_path":"/workspace/a","content_base64":"eA=="}"#,
            r#"{"op":"session_shutdown","session_id":"pid-7","stop_vm":false}"#,
        ];
        for l in lines {
            parse_sidecar_request(l.as_bytes()).unwrap();
        }
        assert!(matches!(
            parse_sidecar_request(b"{nope"),
            Err(SidecarReply::Error {
                code: SidecarErrorCode::Parse,
                ..
            })
        ));
        assert!(matches!(
            parse_sidecar_request(br#"{"op":"fly"}"#),
            Err(SidecarReply::Error {
                code: SidecarErrorCode::UnknownOp,
                ..
            })
        ));
        assert!(matches!(
            parse_sidecar_request(br#"{"op":"exec"}"#),
            Err(SidecarReply::Error {
                code: SidecarErrorCode::Parse,
                ..
            })
        ));
    }

    #[test]
    fn paths_resolve_inside_the_workspace_only() {
        let ws = "/workspace";
        assert_eq!(
            resolve_in_workspace(ws, "/workspace/a/../b").as_deref(),
            Some("/workspace/b")
        );
        assert_eq!(
            resolve_in_workspace(ws, "/workspace").as_deref(),
            Some("/workspace")
        );
        assert_eq!(resolve_in_workspace(ws, "../../etc/passwd"), None);
        assert_eq!(resolve_in_workspace(ws, "/workspace/../etc/passwd"), None);
        assert_eq!(resolve_in_workspace(ws, "/workspacex/a"), None);
        assert_eq!(resolve_in_workspace(ws, "/etc"), None);
        assert_eq!(
            resolve_in_workspace(ws, "proj/in.txt").as_deref(),
            Some("/workspace/proj/in.txt")
        );
    }
}
