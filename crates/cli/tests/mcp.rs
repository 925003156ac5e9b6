//! End-to-end tests of `nook mcp`: the test is the MCP client, speaking
//! JSON-RPC line by line to the server's stdin/stdout; sandboxes are real
//! guests on the qemu engine.

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::mcp::{wait_with_limit, McpClient};
use common::{nook, qemu_of, ready};

/// The protocol versions current MCP clients send.
const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The session host process of sandbox `id` and its session directory.
fn sandbox_host(id: &str) -> (u32, std::path::PathBuf) {
    let sd = nook_serve::SessionDir::new(&nook::default_home(), id).expect("a session name");
    let st = sd.read_state().expect("the sandbox's session state");
    (st.pid, sd.0)
}

/// Asserts sandbox `id` left nothing: no VM process, no session directory.
fn assert_gone(id: &str, host_pid: u32, dir: &std::path::Path) {
    let vms = qemu_of(host_pid);
    assert!(vms.is_empty(), "sandbox {id} left VM processes: {vms:?}");
    assert!(
        !dir.exists(),
        "sandbox {id} left its session directory {}",
        dir.display()
    );
    assert!(
        !nook_serve::host_alive(host_pid),
        "sandbox {id}'s session host is still running"
    );
}

#[test]
fn initialize_negotiates_each_protocol_version_clients_send() {
    for version in VERSIONS {
        let (mut c, init) = McpClient::connect(version, &[]);
        assert_eq!(init["protocolVersion"], version, "{init}");
        assert_eq!(init["serverInfo"]["name"], "nook");
        assert!(init["serverInfo"]["version"].is_string());
        assert!(init["capabilities"]["tools"].is_object(), "{init}");
        let instructions = init["instructions"].as_str().unwrap_or_default();
        assert!(instructions.contains("sandbox_create"), "{instructions}");
        let list = c.request("tools/list", json!({}));
        assert_eq!(
            list["result"]["tools"].as_array().map(Vec::len),
            Some(nook_mcp::tools::TOOL_NAMES.len()),
            "{version}: {list}"
        );
        assert!(c.disconnect().success(), "{version}");
    }
}

#[test]
fn tools_list_names_every_tool_with_its_schema() {
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let list = c.request("tools/list", json!({}));
    let tools = list["result"]["tools"].as_array().expect("tools").clone();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, nook_mcp::tools::TOOL_NAMES);
    let required = |name: &str| -> Vec<String> {
        let t = tools.iter().find(|t| t["name"] == name).expect(name);
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 40),
            "{t}"
        );
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
        let mut r: Vec<String> = t["inputSchema"]["required"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    assert_eq!(required("run"), ["command"]);
    assert_eq!(required("sandbox_create"), Vec::<String>::new());
    assert_eq!(required("sandbox_exec"), ["command", "sandbox_id"]);
    assert_eq!(required("file_write"), ["path", "sandbox_id"]);
    assert_eq!(required("file_read"), ["path", "sandbox_id"]);
    assert_eq!(required("file_list"), ["path", "sandbox_id"]);
    assert_eq!(required("sandbox_snapshot"), ["name", "sandbox_id"]);
    assert_eq!(required("sandbox_list"), Vec::<String>::new());
    assert_eq!(required("sandbox_destroy"), ["sandbox_id"]);
    assert_eq!(required("desktop_create"), Vec::<String>::new());
    assert_eq!(required("desktop_action"), ["action", "desktop_id"]);
    assert_eq!(required("desktop_destroy"), ["desktop_id"]);
    let run = tools.iter().find(|t| t["name"] == "run").unwrap();
    for field in ["command", "image", "timeout_s", "env", "workdir", "stdin"] {
        assert!(
            run["inputSchema"]["properties"][field].is_object(),
            "run.{field}"
        );
    }
    for field in ["stdout", "stderr", "exit_code", "truncated"] {
        assert!(
            run["outputSchema"]["properties"][field].is_object(),
            "run output {field}"
        );
    }
    // Arguments that do not fit a schema are tool errors, not protocol errors.
    let msg = c.tool_error("run", json!({"cmd": "true"}));
    assert!(msg.contains("unknown field `cmd`"), "{msg}");
    let msg = c.tool_error(
        "sandbox_exec",
        json!({"sandbox_id": "no-such-sandbox", "command": "true"}),
    );
    assert!(msg.contains("unknown sandbox `no-such-sandbox`"), "{msg}");
    assert!(c.disconnect().success());
}

#[test]
fn a_sandbox_session_over_mcp() {
    if !ready() {
        return;
    }
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let id = c.create(json!({}));
    let (host_pid, dir) = sandbox_host(&id);
    assert!(!qemu_of(host_pid).is_empty(), "no VM for sandbox {id}");

    let w = c.ok(
        "file_write",
        json!({"sandbox_id": id, "path": "/work/in.txt", "content": "hello from the host\n"}),
    );
    assert_eq!(w["bytes"], 20);
    let out = c.ok(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "cat /work/in.txt; wc -c < /work/in.txt >&2; exit 4"}),
    );
    assert_eq!(out["stdout"], "hello from the host\n");
    assert_eq!(out["stderr"].as_str().map(str::trim), Some("20"));
    assert_eq!(out["exit_code"], 4);
    assert_eq!(out["truncated"], false);

    c.ok(
        "file_write",
        json!({"sandbox_id": id, "path": "/work/bin.dat", "content_base64": "AP8B", "mode": "600"}),
    );
    let listed = c.ok("file_list", json!({"sandbox_id": id, "path": "/work"}));
    let mut entries: Vec<(String, String, u64)> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["type"].as_str().unwrap_or_default().to_string(),
                e["size"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("bin.dat".into(), "file".into(), 3),
            ("in.txt".into(), "file".into(), 20)
        ]
    );
    let text = c.ok(
        "file_read",
        json!({"sandbox_id": id, "path": "/work/in.txt"}),
    );
    assert_eq!(text["content"], "hello from the host\n");
    assert_eq!(text["size"], 20);
    assert_eq!(text["truncated"], false);
    let binary = c.ok(
        "file_read",
        json!({"sandbox_id": id, "path": "/work/bin.dat"}),
    );
    assert_eq!(binary["content_base64"], "AP8B");
    assert!(binary.get("content").is_none(), "{binary}");
    let mode = c.ok(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "stat -c %a /work/bin.dat"}),
    );
    assert_eq!(mode["stdout"], "600\n");

    // A snapshot of the sandbox starts new VMs with its files.
    let snap = format!("mcp-test-{}", std::process::id());
    let taken = c.ok("sandbox_snapshot", json!({"sandbox_id": id, "name": snap}));
    assert_eq!(taken["name"], snap.as_str());
    let restored = nook()
        .args([
            "run",
            "--engine",
            "qemu",
            "--snapshot",
            &snap,
            "--",
            "cat",
            "/work/in.txt",
        ])
        .output()
        .expect("nook run --snapshot");
    let _ = nook().args(["snapshot", "rm", &snap]).output();
    assert_eq!(common::ok(&restored), "hello from the host\n");

    let msg = c.tool_error(
        "file_read",
        json!({"sandbox_id": id, "path": "/work/missing"}),
    );
    assert!(msg.contains("file_read"), "{msg}");
    let list = c.ok("sandbox_list", json!({}));
    let mine = list["sandboxes"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["sandbox_id"] == id.as_str()).cloned())
        .expect("the sandbox is listed");
    assert_eq!(mine["owned"], true);
    assert_eq!(mine["state"], "running");

    c.ok("sandbox_destroy", json!({"sandbox_id": id}));
    assert_gone(&id, host_pid, &dir);
    let msg = c.tool_error("sandbox_exec", json!({"sandbox_id": id, "command": "true"}));
    assert!(msg.contains("unknown sandbox"), "{msg}");
    assert!(c.disconnect().success());
}

#[test]
fn run_reports_exit_codes_timeouts_and_truncation_as_results() {
    if !ready() {
        return;
    }
    let (mut c, _) = McpClient::connect("2025-03-26", &["--max-output", "1000"]);
    let out = c.ok("run", json!({"command": "echo hi; exit 3"}));
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["timed_out"], false);
    let out = c.ok(
        "run",
        json!({"command": "cd \"$D\" && pwd && cat", "env": {"D": "/tmp"}, "stdin": "piped in"}),
    );
    assert_eq!(out["stdout"], "/tmp\npiped in");
    assert_eq!(out["exit_code"], 0);
    let out = c.ok(
        "run",
        json!({"command": "head -c 5000 /dev/zero | tr '\\0' x"}),
    );
    assert_eq!(out["truncated"], true);
    assert_eq!(out["stdout"].as_str().map(str::len), Some(1000));
    assert_eq!(out["dropped_bytes"], 4000);
    let started = Instant::now();
    let out = c.ok(
        "run",
        json!({"command": "echo before; sleep 100", "timeout_s": 2}),
    );
    assert_eq!(out["exit_code"], 124);
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["stdout"], "before\n");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the timeout did not stop it"
    );
    assert!(c.disconnect().success());
}

#[test]
fn sandboxes_go_when_the_client_disconnects_or_the_server_is_terminated() {
    if !ready() {
        return;
    }
    // The client closes stdin with a sandbox still running.
    let (mut c, _) = McpClient::connect("2024-11-05", &[]);
    let id = c.create(json!({}));
    let (pid, dir) = sandbox_host(&id);
    let out = c.ok(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "sleep 1; echo slept", "timeout_s": 30}),
    );
    assert_eq!(out["stdout"], "slept\n");
    assert!(c.disconnect().success());
    assert_gone(&id, pid, &dir);

    // SIGTERM to the server.
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let id = c.create(json!({"memory_mib": 192}));
    let (pid, dir) = sandbox_host(&id);
    let st = nook_serve::SessionDir::new(&nook::default_home(), &id)
        .and_then(|sd| sd.read_state())
        .expect("state");
    assert_eq!(st.memory_mib, 192);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_with_limit(&mut c.child, Duration::from_secs(90));
    assert_gone(&id, pid, &dir);
}

#[test]
fn sandboxes_share_only_host_directories_the_user_allowed() {
    if !ready() {
        return;
    }
    let allowed = tempfile::tempdir().expect("tempdir");
    let proj = allowed.path().join("proj");
    std::fs::create_dir(&proj).expect("mkdir");
    std::fs::write(proj.join("f.txt"), "shared\n").expect("write");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let allow = allowed.path().to_str().expect("utf-8 path");
    let (mut c, _) = McpClient::connect("2025-06-18", &["--allow-share", allow]);
    let msg = c.tool_error(
        "sandbox_create",
        json!({"share": [{"host_dir": elsewhere.path(), "guest_path": "/x"}]}),
    );
    assert!(
        msg.contains("not under a directory the user allowed"),
        "{msg}"
    );
    let id =
        c.create(json!({"share": [{"host_dir": proj, "guest_path": "/proj", "read_only": true}]}));
    let (pid, dir) = sandbox_host(&id);
    let out = c.ok(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "cat /proj/f.txt; touch /proj/new"}),
    );
    assert_eq!(out["stdout"], "shared\n");
    assert_ne!(out["exit_code"], 0, "a read-only share was writable: {out}");
    assert!(!proj.join("new").exists());
    assert!(c.disconnect().success());
    assert_gone(&id, pid, &dir);
}

/// Whether a process whose command line contains `needle` runs in sandbox `id`.
fn guest_runs(c: &mut McpClient, id: &str, needle: &str) -> bool {
    let ps = c.ok(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "ps -o args"}),
    );
    ps["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(needle) && !l.contains("ps -o args"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cancelled_call_kills_its_command_and_a_disconnect_mid_call_ends_everything() {
    if !ready() {
        return;
    }
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let id = c.create(json!({}));
    let (pid, dir) = sandbox_host(&id);
    let call = c.start_call(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "sleep 301; echo finished"}),
    );
    wait_for("the command to start", || {
        guest_runs(&mut c, &id, "sleep 301")
    });
    c.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": call, "reason": "test"}}),
    );
    wait_for("the cancelled command to end", || {
        !guest_runs(&mut c, &id, "sleep 301")
    });

    // A client that leaves while a command runs: the server ends at once
    // and takes the sandbox with it.
    c.start_call(
        "sandbox_exec",
        json!({"sandbox_id": id, "command": "sleep 302"}),
    );
    wait_for("the second command to start", || {
        guest_runs(&mut c, &id, "sleep 302")
    });
    let started = Instant::now();
    assert!(c.disconnect().success());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the server waited for the command"
    );
    assert_gone(&id, pid, &dir);
}

#[test]
fn an_idle_sandbox_expires_by_itself() {
    if !ready() {
        return;
    }
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let id = c.create(json!({"idle_timeout_s": 2}));
    let (pid, dir) = sandbox_host(&id);
    let st = nook_serve::SessionDir(dir.clone())
        .read_state()
        .expect("state");
    assert_eq!(st.state, nook_serve::SessionPhase::Running);
    wait_for("the idle sandbox to stop", || {
        nook_serve::SessionDir(dir.clone())
            .read_state()
            .map(|s| s.state == nook_serve::SessionPhase::Exited)
            .unwrap_or(false)
    });
    let st = nook_serve::SessionDir(dir.clone())
        .read_state()
        .expect("state");
    assert!(
        st.exit_reason
            .as_deref()
            .unwrap_or_default()
            .contains("idle"),
        "{st:?}"
    );
    assert!(qemu_of(pid).is_empty(), "an expired sandbox kept its VM");
    let msg = c.tool_error("sandbox_exec", json!({"sandbox_id": id, "command": "true"}));
    assert!(msg.contains("not running any more"), "{msg}");
    assert!(c.disconnect().success());
    assert_gone(&id, pid, &dir);
}

#[test]
fn run_and_sandboxes_boot_an_image_with_its_config() {
    if !ready() || !std::path::Path::new("/bin/busybox").is_file() {
        return;
    }
    use nook_image::testing::{LayerBuilder, TestImage, TestLayer};
    let busybox = std::fs::read("/bin/busybox").expect("read busybox");
    let mut layer = LayerBuilder::new();
    layer
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc", 0o755)
        .file("etc/marker", b"from the image\n", 0o644)
        .dir("work", 0o755);
    for applet in ["sh", "cat", "echo", "pwd", "sleep", "ps"] {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    let image = TestImage::with_config(
        vec![TestLayer::gzip(layer.tar())],
        "amd64",
        json!({"Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/work"}),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("image.tar");
    let name = format!("nooktest-mcp-{}:1", std::process::id());
    image.write_docker_archive(&archive, &[&name]);
    let archive = archive.to_str().expect("utf-8 path");
    let _rmi = RemoveImage(name.clone());
    common::ok(
        &nook()
            .args(["image", "import", archive])
            .output()
            .expect("import"),
    );
    let (mut c, _) = McpClient::connect("2025-06-18", &[]);
    let script = "echo $GREETING; pwd; cat /etc/marker";
    let out = c.ok("run", json!({"image": name, "command": script}));
    assert_eq!(out["stdout"], "hello\n/work\nfrom the image\n");
    let id = c.create(json!({"image": name}));
    let out = c.ok("sandbox_exec", json!({"sandbox_id": id, "command": script}));
    assert_eq!(out["stdout"], "hello\n/work\nfrom the image\n");
    let msg = c.tool_error(
        "run",
        json!({"image": "nooktest-no-such-image:1", "command": "true"}),
    );
    assert!(msg.contains("nooktest-no-such-image"), "{msg}");
    assert!(c.disconnect().success());
}

/// Removes an image name from the store when dropped.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = nook().args(["rmi", &self.0]).output();
    }
}
