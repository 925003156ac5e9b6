//! An MCP client for tests and benchmarks: JSON-RPC over `nook mcp`'s
//! stdin/stdout, one message per line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::nook;

/// A client of one `nook mcp` process.
pub struct McpClient {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl McpClient {
    /// Starts `nook mcp --engine qemu ARGS` (stderr goes to the test's).
    pub fn start(args: &[&str]) -> McpClient {
        let mut child = nook()
            .args([&["mcp", "--engine", "qemu"], args].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nook mcp");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        McpClient {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    /// Starts the server and completes the handshake at `version`; returns
    /// the `initialize` result too.
    pub fn connect(version: &str, args: &[&str]) -> (McpClient, Value) {
        let mut c = McpClient::start(args);
        let init = c.request(
            "initialize",
            json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "nook-test", "version": "1"}
            }),
        );
        c.notify("notifications/initialized");
        let result = init.get("result").cloned().unwrap_or_else(|| {
            panic!("initialize failed: {init}");
        });
        (c, result)
    }

    pub fn send(&mut self, msg: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{msg}").expect("write to nook mcp");
        stdin.flush().expect("flush");
    }

    pub fn notify(&mut self, method: &str) {
        self.send(&json!({"jsonrpc": "2.0", "method": method}));
    }

    /// The response to request `method` (notifications in between are skipped).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("read from nook mcp");
            assert!(n > 0, "nook mcp closed stdout while {method} was pending");
            let msg: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {line}"));
            assert_eq!(msg["jsonrpc"], "2.0", "{line}");
            if msg.get("id") == Some(&json!(id)) {
                return msg;
            }
        }
    }

    /// Sends a `tools/call` without waiting for it; returns its request id.
    pub fn start_call(&mut self, tool: &str, args: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}));
        id
    }

    /// `tools/call`: the result (a protocol error fails the test).
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{tool}: protocol error instead of a result: {r}"))
    }

    /// A successful call's structured content.
    pub fn ok(&mut self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args.clone());
        assert_eq!(r["isError"], false, "{tool} {args}: {r}");
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "{tool}: no text rendering: {r}");
        r["structuredContent"].clone()
    }

    /// `sandbox_create` with `args`: the new sandbox's id.
    pub fn create(&mut self, args: Value) -> String {
        let created = self.ok("sandbox_create", args);
        created["sandbox_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no sandbox_id: {created}"))
            .to_string()
    }

    /// A tool error's message.
    pub fn tool_error(&mut self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone());
        assert_eq!(r["isError"], true, "{tool} {args}: not a tool error: {r}");
        r["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Closes stdin (the client disconnects) and waits for the server to end.
    pub fn disconnect(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        wait_with_limit(&mut self.child, Duration::from_secs(90))
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "nook mcp did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}
