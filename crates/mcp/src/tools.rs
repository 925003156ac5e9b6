//! The tools `nook mcp` offers, their descriptions, and their handlers
//! (thin: the work is in [`crate::exec`], [`crate::sandbox`] and
//! nook-serve's [`SessionClient`](nook_serve::SessionClient)).

use std::path::Path;

use crate::config::McpConfig;
use crate::error::ToolError;
use crate::registry::ToolRegistry;
use crate::sandbox::Sandboxes;
use crate::types::*;

/// What the handlers work with.
#[derive(Debug)]
pub struct ToolContext {
    pub cfg: McpConfig,
    pub sandboxes: Sandboxes,
    /// Screenshot sizes of this client's desktops.
    pub scaling: crate::desktop::DesktopScaling,
}

impl ToolContext {
    pub fn new(cfg: McpConfig) -> ToolContext {
        let sandboxes = Sandboxes::new(&cfg.vm.home);
        ToolContext {
            cfg,
            sandboxes,
            scaling: Default::default(),
        }
    }
}

/// Names of the tools, in the order `tools/list` gives them.
pub const TOOL_NAMES: [&str; 12] = [
    "run",
    "sandbox_create",
    "sandbox_exec",
    "file_write",
    "file_read",
    "file_list",
    "sandbox_snapshot",
    "sandbox_list",
    "sandbox_destroy",
    "desktop_create",
    "desktop_action",
    "desktop_destroy",
];

/// Registers nook's tools.
pub fn register(r: &mut ToolRegistry<ToolContext>) {
    r.add(
        "run",
        "Run one shell command (`/bin/sh -c`) in a fresh, isolated Linux microVM that is thrown away afterwards. \
         Returns stdout, stderr and exit_code; a failing command is a normal result with its exit code. \
         Use it for one-off commands; for several commands that share files or state, use sandbox_create and sandbox_exec.",
        |ctx, a: RunArgs, cancel| crate::exec::run(&ctx.cfg, a, cancel),
    );
    r.add(
        "sandbox_create",
        "Create a sandbox: a Linux microVM that stays up so that files and processes persist across sandbox_exec, \
         file_write, file_read and file_list calls. Returns its sandbox_id. Destroy it with sandbox_destroy when done; \
         it is also destroyed when this client disconnects, and stops after idle_timeout_s (default 900) without a running command.",
        |ctx, a: SandboxCreateArgs, _| ctx.sandboxes.create(&ctx.cfg, a),
    );
    r.add(
        "sandbox_exec",
        "Run a shell command (`/bin/sh -c`) in a sandbox and wait for it. Returns stdout, stderr and exit_code \
         (a failing command is a normal result); output past the server's cap is dropped and `truncated` says so. \
         With timeout_s the command's process group is killed when it passes (exit_code 124, timed_out true).",
        |ctx, a: SandboxExecArgs, cancel| {
            let client = ctx.sandboxes.client("sandbox_exec", &a.sandbox_id)?;
            crate::exec::exec_in(&client, &ctx.cfg, a, cancel)
        },
    );
    r.add(
        "file_write",
        "Create or replace a file in a sandbox (atomically), creating missing parent directories. \
         Give `content` for text or `content_base64` for binary data.",
        |ctx, a: FileWriteArgs, _| file_write(ctx, a),
    );
    r.add(
        "file_read",
        "Read a file from a sandbox. Returns `content` when it is UTF-8 text, else `content_base64`, with its size; \
         files larger than the server's cap are cut and `truncated` says so.",
        |ctx, a: FileReadArgs, _| file_read(ctx, a),
    );
    r.add(
        "file_list",
        "List a directory in a sandbox: each entry's name, type (file, dir, symlink, other) and size in bytes.",
        |ctx, a: FileListArgs, _| file_list(ctx, a),
    );
    r.add(
        "sandbox_snapshot",
        "Save a sandbox's whole VM (memory and files) as a named snapshot on the host; the sandbox keeps running. \
         No command may be running in it. The user can start new VMs from it with `nook run --snapshot NAME`.",
        |ctx, a: SandboxSnapshotArgs, _| {
            let path = nook::named_snapshot(&ctx.cfg.vm.home, &a.name).map_err(|e| {
                ToolError::Argument {
                    field: "name",
                    reason: e.to_string(),
                }
            })?;
            let client = ctx.sandboxes.client("sandbox_snapshot", &a.sandbox_id)?;
            client
                .snapshot(&path)
                .map_err(|e| ToolError::session("sandbox_snapshot", &a.sandbox_id, e))?;
            Ok(SnapshotTaken {
                sandbox_id: a.sandbox_id,
                name: a.name,
                path: path.display().to_string(),
            })
        },
    );
    r.add(
        "sandbox_list",
        "List the running sandboxes: their sandbox_id, state, image, memory and CPUs, and whether this client created them.",
        |ctx, _: SandboxListArgs, _| ctx.sandboxes.list(),
    );
    r.add(
        "sandbox_destroy",
        "Stop a sandbox this client created and delete it with everything in it.",
        |ctx, a: SandboxDestroyArgs, _| {
            ctx.sandboxes.destroy(&a.sandbox_id)?;
            Ok(SandboxDestroyed {
                sandbox_id: a.sandbox_id,
            })
        },
    );
}

fn file_write(ctx: &ToolContext, a: FileWriteArgs) -> Result<FileWritten, ToolError> {
    check_guest_path("path", &a.path)?;
    let bytes = file_bytes(&a)?;
    let mode = check_mode(a.mode.as_deref())?;
    let client = ctx.sandboxes.client("file_write", &a.sandbox_id)?;
    let failed = |e| ToolError::session("file_write", &a.sandbox_id, e);
    if let Some(parent) = Path::new(&a.path).parent().and_then(Path::to_str) {
        if parent != "/" {
            client.mkdir_all(parent, 0o755).map_err(failed)?;
        }
    }
    client
        .write_from(&a.path, mode, &mut bytes.as_slice())
        .map_err(failed)?;
    Ok(FileWritten {
        path: a.path,
        bytes: bytes.len() as u64,
        mode: format!("{mode:o}"),
    })
}

fn file_read(ctx: &ToolContext, a: FileReadArgs) -> Result<FileContent, ToolError> {
    check_guest_path("path", &a.path)?;
    let client = ctx.sandboxes.client("file_read", &a.sandbox_id)?;
    let mut bytes = Vec::new();
    let read = client
        .read_to(&a.path, &mut bytes, Some(ctx.cfg.max_output))
        .map_err(|e| ToolError::session("file_read", &a.sandbox_id, e))?;
    Ok(file_content(bytes, read.size, read.truncated))
}

fn file_list(ctx: &ToolContext, a: FileListArgs) -> Result<FileEntries, ToolError> {
    check_guest_path("path", &a.path)?;
    let client = ctx.sandboxes.client("file_list", &a.sandbox_id)?;
    let (stats, truncated) = client
        .list(&a.path)
        .map_err(|e| ToolError::session("file_list", &a.sandbox_id, e))?;
    Ok(FileEntries {
        path: a.path,
        entries: stats
            .into_iter()
            .map(|s| FileEntry {
                name: s.name,
                kind: s.kind.into(),
                size: s.size,
            })
            .collect(),
        truncated,
    })
}

/// A registry with nook's tools, the desktop's included.
pub fn registry() -> ToolRegistry<ToolContext> {
    let mut r = ToolRegistry::default();
    register(&mut r);
    crate::desktop::register(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Cancel;
    use rmcp::model::JsonObject;

    fn ctx() -> ToolContext {
        let home = std::env::temp_dir().join(format!("nook-mcp-unit-{}", std::process::id()));
        let mut cfg = McpConfig::new("/bin/false".into());
        cfg.vm.home = home;
        ToolContext::new(cfg)
    }

    fn call(name: &str, args: serde_json::Value) -> (bool, String) {
        let r = registry();
        let res = r
            .call(
                &ctx(),
                name,
                args.as_object().cloned().unwrap_or_else(JsonObject::new),
                &Cancel::default(),
            )
            .expect("a registered tool");
        let text = res.content[0].as_text().unwrap().text.clone();
        (res.is_error == Some(true), text)
    }

    #[test]
    fn every_tool_is_registered_with_a_schema_and_description() {
        let tools = registry().tools();
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, TOOL_NAMES);
        for t in &tools {
            assert!(
                t.description.as_ref().is_some_and(|d| d.len() > 40),
                "{}",
                t.name
            );
            assert_eq!(
                t.input_schema.get("type"),
                Some(&serde_json::json!("object"))
            );
            let out = t.output_schema.as_ref().expect("an output schema");
            assert_eq!(
                out.get("type"),
                Some(&serde_json::json!("object")),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn bad_arguments_are_tool_errors_before_any_vm() {
        let cases = [
            ("run", serde_json::json!({}), "missing field `command`"),
            (
                "run",
                serde_json::json!({"command": "true", "timeout_s": 0}),
                "timeout_s",
            ),
            (
                "run",
                serde_json::json!({"command": "true", "timeout_s": -1.5}),
                "timeout_s",
            ),
            (
                "run",
                serde_json::json!({"command": "true", "workdir": "tmp"}),
                "absolute",
            ),
            (
                "run",
                serde_json::json!({"command": "true", "env": {"A=B": "1"}}),
                "env",
            ),
            (
                "run",
                serde_json::json!({"command": "true", "bogus": 1}),
                "unknown field `bogus`",
            ),
            (
                "sandbox_exec",
                serde_json::json!({"command": "true"}),
                "missing field `sandbox_id`",
            ),
            (
                "file_write",
                serde_json::json!({"sandbox_id": "s", "path": "/a"}),
                "exactly one of",
            ),
            (
                "file_write",
                serde_json::json!({"sandbox_id": "s", "path": "/a", "content": "x", "content_base64": "eA=="}),
                "exactly one of",
            ),
            (
                "file_write",
                serde_json::json!({"sandbox_id": "s", "path": "/a", "content_base64": "%%%"}),
                "not base64",
            ),
            (
                "file_write",
                serde_json::json!({"sandbox_id": "s", "path": "/a", "content": "x", "mode": "999"}),
                "octal",
            ),
            (
                "file_read",
                serde_json::json!({"sandbox_id": "s", "path": "rel"}),
                "absolute",
            ),
            (
                "sandbox_create",
                serde_json::json!({"share": [{"host_dir": "/tmp", "guest_path": "/t"}]}),
                "--allow-share",
            ),
            (
                "sandbox_list",
                serde_json::json!({"x": 1}),
                "unknown field `x`",
            ),
        ];
        for (tool, args, want) in cases {
            let (is_error, text) = call(tool, args.clone());
            assert!(is_error, "{tool} {args}: not an error: {text}");
            assert!(text.contains(want), "{tool} {args}: {text}");
        }
    }

    #[test]
    fn an_unknown_sandbox_is_a_tool_error_that_says_what_to_do() {
        let id = "no-such-box";
        for (tool, args) in [
            (
                "sandbox_exec",
                serde_json::json!({"sandbox_id": id, "command": "true"}),
            ),
            (
                "file_read",
                serde_json::json!({"sandbox_id": id, "path": "/"}),
            ),
            (
                "file_list",
                serde_json::json!({"sandbox_id": id, "path": "/"}),
            ),
            (
                "file_write",
                serde_json::json!({"sandbox_id": id, "path": "/a", "content": ""}),
            ),
            (
                "sandbox_snapshot",
                serde_json::json!({"sandbox_id": id, "name": "n"}),
            ),
            ("sandbox_destroy", serde_json::json!({"sandbox_id": id})),
            (
                "file_list",
                serde_json::json!({"sandbox_id": "../etc", "path": "/"}),
            ),
        ] {
            let (is_error, text) = call(tool, args);
            assert!(is_error, "{tool}: {text}");
            assert!(text.contains("unknown sandbox"), "{tool}: {text}");
            assert!(text.contains("sandbox_list"), "{tool}: {text}");
        }
    }

    #[test]
    fn modes_and_contents_are_decoded() {
        assert_eq!(check_mode(None).unwrap(), 0o644);
        assert_eq!(check_mode(Some("755")).unwrap(), 0o755);
        assert_eq!(check_mode(Some("0600")).unwrap(), 0o600);
        assert!(check_mode(Some("17777")).is_err());
        assert!(check_mode(Some("")).is_err());
        let text = file_content(b"hi\n".to_vec(), 3, false);
        assert_eq!(text.content.as_deref(), Some("hi\n"));
        let binary = file_content(vec![0xff, 0, 1], 3, false);
        assert_eq!(binary.content, None);
        assert_eq!(binary.content_base64.as_deref(), Some("/wAB"));
        // "é" is two bytes; a cap that cuts it in half keeps the text.
        let cut = file_content("aé".as_bytes()[..2].to_vec(), 3, true);
        assert_eq!(cut.content.as_deref(), Some("a"));
        assert!(cut.truncated);
    }
}
