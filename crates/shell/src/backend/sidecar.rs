//! The `sidecar` back end: speaks the `devshell-vm` JSON-lines protocol
//! (one request line, one reply line) to a server of it at
//! `DEVSHELL_VM_SOCKET`, `nook serve` among them. The workspace's parent is
//! the session's staging directory and its name the leaf, so programs see
//! it at `GUEST_WORKSPACE/NAME`: before each program the shell pushes it to
//! the guest, after it pulls the guest's changes back (files the guest
//! deleted stay on the host: the protocol's pull only adds and replaces).
//! The protocol has no channel for a program's output or for signals, so
//! the program's stdin, stdout and stderr go through files in the
//! workspace (`.nook-shell-io/`), shown once it ends, and Ctrl-C cannot
//! reach it (a per-program timeout can: `--timeout-ms`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nook_serve::daemon::sidecar_proto::{
    SidecarErrorCode, SidecarReply, SidecarRequest, SyncDirection, SIDECAR_PROTOCOL_VERSION,
};

use crate::backend::{sh_quote, Backend, GuestCommand, GuestStdin};
use crate::error::ShellError;
use crate::hostfs::HostFs;
use crate::workspace::WorkspaceFs;

/// The workspace directory that carries a program's stdio.
const IO_DIR: &str = ".nook-shell-io";

/// The `sidecar` back end.
#[derive(Debug)]
pub struct SidecarBackend {
    socket: PathBuf,
    session_id: String,
    workspace: PathBuf,
    /// The workspace directory's name: the protocol's `vfs_cwd_leaf`.
    leaf: String,
    /// Where the guest sees the workspace: `GUEST_WORKSPACE/LEAF`.
    guest_root: String,
    fs: HostFs,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
}

impl SidecarBackend {
    /// Connects, shakes hands and starts the session (the server boots
    /// its VM; `nook serve` uses the Rust toolchain image by default).
    pub fn start(
        socket: PathBuf,
        session_id: String,
        workspace: PathBuf,
        guest_root: String,
    ) -> Result<SidecarBackend, ShellError> {
        let fs = HostFs::open(&workspace)
            .map_err(|e| ShellError::io("open the workspace", &workspace, e))?;
        // The staging directory is the workspace's parent and the leaf its
        // name, so a push copies the workspace itself to GUEST/LEAF.
        let (Some(staging), Some(leaf)) = (
            workspace.parent().map(Path::to_path_buf),
            workspace
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string),
        ) else {
            return Err(ShellError::Sidecar {
                socket,
                message: format!(
                    "the workspace {} has no parent directory",
                    workspace.display()
                ),
            });
        };
        let guest_workspace = guest_root;
        let mut b = SidecarBackend {
            socket,
            session_id,
            guest_root: format!("{}/{leaf}", guest_workspace.trim_end_matches('/')),
            workspace,
            leaf,
            fs,
            conn: None,
        };
        match b.call(&SidecarRequest::Handshake {
            version: SIDECAR_PROTOCOL_VERSION,
        })? {
            SidecarReply::HandshakeOk { .. } => {}
            other => return Err(b.unexpected("handshake", &other)),
        }
        let start = SidecarRequest::SessionStart {
            session_id: b.session_id.clone(),
            staging_dir: staging.display().to_string(),
            guest_workspace,
        };
        match b.call(&start)? {
            SidecarReply::SessionOk { .. } => Ok(b),
            other => Err(b.unexpected("session_start", &other)),
        }
    }

    fn failed(&self, message: String) -> ShellError {
        ShellError::Sidecar {
            socket: self.socket.clone(),
            message,
        }
    }

    fn unexpected(&self, op: &str, reply: &SidecarReply) -> ShellError {
        let message = match reply {
            SidecarReply::Error { code, message } => format!("{op}: {code:?}: {message}"),
            other => format!("{op}: unexpected reply {other:?}"),
        };
        self.failed(message)
    }

    /// One request, one reply.
    fn call(&mut self, req: &SidecarRequest) -> Result<SidecarReply, ShellError> {
        if self.conn.is_none() {
            let s = UnixStream::connect(&self.socket)
                .map_err(|e| self.failed(format!("cannot connect: {e}")))?;
            let r = BufReader::new(s.try_clone().map_err(|e| self.failed(e.to_string()))?);
            self.conn = Some((s, r));
        }
        let mut line = serde_json::to_vec(req).map_err(|e| self.failed(e.to_string()))?;
        line.push(b'\n');
        let result = match self.conn.as_mut() {
            Some((w, r)) => w.write_all(&line).and_then(|_| {
                let mut reply = String::new();
                r.read_line(&mut reply).map(|_| reply)
            }),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        };
        let reply = match result {
            Ok(reply) if !reply.is_empty() => reply,
            Ok(_) => {
                self.conn = None;
                return Err(self.failed("the server closed the connection".into()));
            }
            Err(e) => {
                self.conn = None;
                return Err(self.failed(e.to_string()));
            }
        };
        serde_json::from_str(&reply).map_err(|e| self.failed(format!("bad reply line: {e}")))
    }

    fn sync(&mut self, direction: SyncDirection) -> Result<(), ShellError> {
        let req = SidecarRequest::SyncRequest {
            session_id: self.session_id.clone(),
            direction,
            vfs_cwd_leaf: self.leaf.clone(),
        };
        match self.call(&req)? {
            SidecarReply::SyncOk { .. } => Ok(()),
            other => Err(self.unexpected("sync_request", &other)),
        }
    }

    fn io_path(&self, name: &str) -> PathBuf {
        self.workspace.join(IO_DIR).join(name)
    }
}

fn read_or_empty(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

impl Backend for SidecarBackend {
    fn name(&self) -> &str {
        "sidecar"
    }

    fn guest_root(&self) -> &str {
        &self.guest_root
    }

    fn fs(&mut self) -> &mut dyn WorkspaceFs {
        &mut self.fs
    }

    fn exec(
        &mut self,
        cmd: &GuestCommand,
        stdin: GuestStdin,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, ShellError> {
        let io_dir = self.workspace.join(IO_DIR);
        std::fs::create_dir_all(&io_dir).map_err(|e| ShellError::io("create", &io_dir, e))?;
        let input = match stdin {
            GuestStdin::Bytes(b) => b,
            GuestStdin::Shell => Vec::new(),
        };
        std::fs::write(self.io_path("in"), input)
            .map_err(|e| ShellError::io("write", self.io_path("in"), e))?;
        self.sync(SyncDirection::PushToGuest)?;
        let guest_io = format!("{}/{IO_DIR}", self.guest_root.trim_end_matches('/'));
        // A push leaves out empty directories: make the cwd first.
        let cwd = sh_quote(std::slice::from_ref(&cmd.cwd));
        let line = format!(
            "mkdir -p {cwd} && cd {cwd} && {} < {guest_io}/in > {guest_io}/out 2> {guest_io}/err",
            sh_quote(&cmd.argv)
        );
        let req = SidecarRequest::Exec {
            session_id: self.session_id.clone(),
            guest_cwd: Some(self.guest_root.clone()),
            argv: vec!["sh".into(), "-c".into(), line],
            env: cmd.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            timeout_ms: cmd.timeout_ms,
        };
        let reply = self.call(&req)?;
        self.sync(SyncDirection::PullFromGuest)?;
        let _ = stdout.write_all(&read_or_empty(&self.io_path("out")));
        let _ = stderr.write_all(&read_or_empty(&self.io_path("err")));
        let _ = std::fs::remove_dir_all(&io_dir);
        match reply {
            SidecarReply::ExecResult {
                exit_code, signal, ..
            } => Ok(match signal {
                Some(sig) => nook::exit_code::killed_by(sig),
                None => exit_code,
            }),
            SidecarReply::Error { code, message } => {
                let _ = writeln!(stderr, "nook shell: {}: {code:?}: {message}", cmd.argv[0]);
                Ok(if code == SidecarErrorCode::ExecTimeout {
                    nook::exit_code::TIMEOUT
                } else {
                    126
                })
            }
            other => Err(self.unexpected("exec", &other)),
        }
    }

    fn shutdown(&mut self) -> Result<(), ShellError> {
        let req = SidecarRequest::SessionShutdown {
            session_id: self.session_id.clone(),
        };
        match self.call(&req)? {
            SidecarReply::ShutdownOk { .. } => Ok(()),
            other => Err(self.unexpected("session_shutdown", &other)),
        }
    }
}
