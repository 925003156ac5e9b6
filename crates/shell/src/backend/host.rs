//! The `host` back end, for machines where no VM can run: programs run on
//! the host inside a bubblewrap sandbox with new user, mount, pid, network,
//! IPC and UTS namespaces. Its root has only the system's `/usr` and `/etc`
//! (read-only), empty `/home`, `/root` and `/tmp`, a fresh `/proc`, a
//! minimal `/dev`, no network but loopback, and the workspace, the only
//! writable host path, at the guest workspace path. Its isolation is
//! weaker than a VM's: the programs share the host's kernel.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::backend::{Backend, GuestCommand, GuestStdin};
use crate::error::ShellError;
use crate::hostfs::HostFs;
use crate::signals::Signals;
use crate::workspace::WorkspaceFs;

/// What `auto` and the banner say about this back end.
pub const WEAKER_ISOLATION: &str =
    "programs run on the host in a namespace sandbox (bubblewrap): weaker isolation than a VM, they share the host's kernel";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `host` back end.
#[derive(Debug)]
pub struct HostBackend {
    fs: HostFs,
    workspace: PathBuf,
    guest_root: String,
    signals: Signals,
}

/// Whether the sandbox can run here (bubblewrap installed and allowed to
/// make namespaces); why not otherwise.
pub fn probe() -> Result<(), String> {
    let out = Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/usr", "/usr"])
        .args([
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
        ])
        .args(["--", "/usr/bin/true"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "bubblewrap cannot make namespaces here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(_) => Err("bubblewrap is not installed (apt-get install bubblewrap)".into()),
    }
}

impl HostBackend {
    pub fn new(
        workspace: PathBuf,
        guest_root: String,
        signals: Signals,
    ) -> Result<HostBackend, ShellError> {
        probe().map_err(ShellError::Sandbox)?;
        let fs = HostFs::open(&workspace)
            .map_err(|e| ShellError::io("open the workspace", &workspace, e))?;
        Ok(HostBackend {
            fs,
            workspace,
            guest_root,
            signals,
        })
    }

    /// The sandboxed command for `cmd`.
    fn command(&self, cmd: &GuestCommand) -> Command {
        let mut c = Command::new("bwrap");
        if !cmd.tty {
            // A session of its own: no pushing input into the shell's
            // terminal (TIOCSTI).
            c.arg("--new-session");
        }
        c.args([
            "--unshare-all",
            "--die-with-parent",
            "--hostname",
            "nook-sandbox",
        ])
        .args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]);
        for (link, target) in [
            ("/bin", "usr/bin"),
            ("/sbin", "usr/sbin"),
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
        ] {
            c.args(["--symlink", target, link]);
        }
        c.args([
            "--tmpfs", "/home", "--tmpfs", "/root", "--tmpfs", "/tmp", "--tmpfs", "/run",
        ])
        .args(["--proc", "/proc", "--dev", "/dev"])
        .arg("--bind")
        .arg(&self.workspace)
        .arg(&self.guest_root)
        .arg("--chdir")
        .arg(&cmd.cwd)
        // Through sh so a missing program is 127, as in a shell.
        .args(["--", "/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(&cmd.argv);
        c.env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        if let Ok(term) = std::env::var("TERM") {
            c.env("TERM", term);
        }
        c.envs(cmd.env.iter().cloned());
        c
    }
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

fn pump(mut r: impl Read + Send + 'static, tx: std::sync::mpsc::Sender<Chunk>, out: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let data = buf[..n].to_vec();
            let chunk = if out {
                Chunk::Out(data)
            } else {
                Chunk::Err(data)
            };
            if tx.send(chunk).is_err() {
                break;
            }
        }
    });
}

impl Backend for HostBackend {
    fn name(&self) -> &str {
        "host"
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
        let mut c = self.command(cmd);
        if cmd.tty {
            // On the shell's terminal, in its process group: Ctrl-C reaches
            // the program from the terminal itself.
            c.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            // A group of its own, signalled as a whole; a session of its
            // own inside, so it cannot push input into the shell's
            // terminal (TIOCSTI).
            c.process_group(0)
                .stdin(match stdin {
                    GuestStdin::Shell => Stdio::inherit(),
                    GuestStdin::Bytes(_) => Stdio::piped(),
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = c.spawn().map_err(|e| ShellError::io("run", "bwrap", e))?;
        if let (Some(mut w), GuestStdin::Bytes(bytes)) = (child.stdin.take(), stdin) {
            std::thread::spawn(move || {
                let _ = w.write_all(&bytes);
            });
        }
        let (tx, rx) = channel();
        if let Some(o) = child.stdout.take() {
            pump(o, tx.clone(), true);
        }
        if let Some(e) = child.stderr.take() {
            pump(e, tx.clone(), false);
        }
        drop(tx);
        let group = rustix::process::Pid::from_child(&child);
        let deadline = cmd
            .timeout_ms
            .map(|t| Instant::now() + Duration::from_millis(t));
        let mut interrupts = self.signals.interrupts.load(Ordering::Relaxed);
        let mut timed_out = false;
        let mut pipes_open = true;
        let status = loop {
            if pipes_open {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Chunk::Out(d)) => {
                        let _ = stdout.write_all(&d);
                        continue;
                    }
                    Ok(Chunk::Err(d)) => {
                        let _ = stderr.write_all(&d);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => pipes_open = false,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(status) = child
                .try_wait()
                .map_err(|e| ShellError::io("wait for", "bwrap", e))?
            {
                if !pipes_open || cmd.tty {
                    break status;
                }
                continue;
            }
            let now = self.signals.interrupts.load(Ordering::Relaxed);
            let hit = now != interrupts;
            interrupts = now;
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if (hit || expired) && !cmd.tty {
                timed_out |= expired;
                let sig = if expired {
                    rustix::process::Signal::KILL
                } else {
                    rustix::process::Signal::INT
                };
                let _ = rustix::process::kill_process_group(group, sig);
            }
        };
        if timed_out {
            let _ = writeln!(
                stderr,
                "nook shell: {}: timed out and was killed",
                cmd.argv[0]
            );
            return Ok(nook::exit_code::TIMEOUT);
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => nook::exit_code::killed_by(sig),
            _ => 125,
        })
    }

    fn shutdown(&mut self) -> Result<(), ShellError> {
        Ok(())
    }
}
