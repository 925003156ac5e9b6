//! The `vm` back end: a nook session whose VM sees the workspace as a live
//! virtio-fs share at the guest workspace path (sync mode: what the guest
//! builds or deletes is on the host at once). The VM boots on a thread
//! while the prompt is already there; the first program waits for what is
//! left of the boot.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nook_serve::{SessionClient, SessionSpec, SpecMount};

use crate::backend::{remote, Backend, GuestCommand, GuestStdin};
use crate::error::ShellError;
use crate::guestfs::GuestFs;
use crate::hostfs::HostFs;
use crate::signals::Signals;
use crate::workspace::WorkspaceFs;

/// Programs that make a session without a chosen image switch to the Rust
/// toolchain image.
const RUST_TOOLS: &[&str] = &["cargo", "rustc", "rustup", "rustdoc"];

/// What the session VM is made of.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub home: PathBuf,
    /// The `nook` binary (session hosts are re-executions of it).
    pub exe: PathBuf,
    /// The session's name (one per workspace).
    pub session: String,
    /// The image chosen by the user; `None`: the built-in root, or the
    /// Rust toolchain image for a Rust workspace.
    pub image: Option<String>,
    /// Boot the Rust toolchain image (a `Cargo.toml` is in the workspace).
    pub rust: bool,
    pub engine: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub kernel: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub boot_timeout_s: u64,
    /// The workspace on the host.
    pub workspace: PathBuf,
    /// Where the guest sees it.
    pub guest_root: String,
    /// Guest-primary mode: the workspace lives in this named volume,
    /// mounted at `guest_root` (no share).
    pub volume: Option<String>,
    /// Stop the session when the shell ends (else the next shell in this
    /// workspace reattaches to it).
    pub stop_on_exit: bool,
}

/// A session the shell can use.
#[derive(Debug)]
struct Booted {
    client: SessionClient,
    /// Runs the Rust toolchain image.
    rust: bool,
}

type BootResult = Result<Booted, ShellError>;

/// The `vm` back end.
#[derive(Debug)]
pub struct VmBackend {
    opts: VmOptions,
    fs: HostFs,
    /// Guest-primary mode's file operations.
    guest_fs: Option<GuestFs>,
    signals: Signals,
    booting: Option<JoinHandle<BootResult>>,
    session: Option<Booted>,
    commands: Option<Vec<String>>,
}

impl VmBackend {
    /// Starts booting the session in the background and returns at once.
    /// With `eager`, starts booting the session in the background (and
    /// returns at once); else the first program boots it.
    pub fn start(opts: VmOptions, signals: Signals, eager: bool) -> Result<VmBackend, ShellError> {
        let fs = HostFs::open(&opts.workspace)
            .map_err(|e| ShellError::io("open the workspace", &opts.workspace, e))?;
        let booting = if eager {
            let boot_opts = opts.clone();
            let handle = std::thread::Builder::new()
                .name("nook-shell-boot".into())
                .spawn(move || boot(&boot_opts, boot_opts.rust, &mut std::io::stderr()))
                .map_err(|e| ShellError::io("spawn a thread for", "the boot", e))?;
            Some(handle)
        } else {
            None
        };
        let guest_fs = opts
            .volume
            .as_ref()
            .map(|_| GuestFs::new(opts.guest_root.clone()));
        Ok(VmBackend {
            opts,
            fs,
            guest_fs,
            signals,
            booting,
            session: None,
            commands: None,
        })
    }

    /// Waits for the boot (or boots now); the session, or why there is
    /// none (the next program tries again).
    fn ready(&mut self) -> Result<&Booted, ShellError> {
        if let Some(handle) = self.booting.take() {
            let booted = handle.join().map_err(|_| ShellError::BootPanicked)??;
            self.session = Some(booted);
        }
        if self.session.is_none() {
            self.session = Some(boot(&self.opts, self.opts.rust, &mut std::io::stderr())?);
        }
        match &self.session {
            Some(s) => Ok(s),
            None => Err(ShellError::BootPanicked),
        }
    }

    /// Reboots the session on the Rust toolchain image.
    fn switch_to_rust(&mut self) -> Result<(), ShellError> {
        let _ = writeln!(
            std::io::stderr(),
            "nook shell: restarting the session on the Rust toolchain image ({})",
            nook_serve::toolchain::RUST_IMAGE
        );
        if self.session.take().is_some() {
            stop_session(&self.opts)?;
        }
        self.session = Some(boot(&self.opts, true, &mut std::io::stderr())?);
        self.commands = None;
        Ok(())
    }
}

/// Starts (or reattaches to) the session.
fn boot(opts: &VmOptions, rust: bool, progress: &mut dyn Write) -> BootResult {
    let image = match (&opts.image, rust) {
        (Some(i), _) => Some(i.clone()),
        (None, true) => Some(nook_serve::toolchain::ensure_rust_image(
            &opts.home, progress,
        )?),
        (None, false) => None,
    };
    // A session this workspace left running (DEVSHELL_VM_STOP_ON_EXIT=0).
    if let Ok(client) = SessionClient::open(&opts.home, &opts.session) {
        let same = nook_serve::list_sessions(&opts.home)
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.name == opts.session))
            .is_some_and(|s| s.image == image);
        if same {
            return Ok(Booted { client, rust });
        }
        stop_session(opts)?;
    }
    // An exited session's directory under the same name.
    let _ = nook_serve::remove(&opts.home, &opts.session, false);
    let mut spec = SessionSpec {
        image,
        kernel: opts.kernel.clone(),
        agent: opts.agent.clone(),
        ..SessionSpec::new(
            opts.session.clone(),
            opts.engine.clone(),
            opts.memory_mib,
            opts.vcpus,
            opts.boot_timeout_s,
        )
    };
    match &opts.volume {
        // Guest-primary: the workspace is a named volume in the session.
        Some(name) => {
            let volume = nook::VolumeStore::in_home(&opts.home)
                .and_then(|store| store.ensure(name, nook::DEFAULT_VOLUME_SIZE))
                .map_err(ShellError::Volume)?;
            spec.volumes.push(SpecMount {
                host_path: volume.path,
                guest_path: opts.guest_root.clone(),
                read_only: false,
            });
        }
        // Sync: the host directory, shared live.
        None => spec.shares.push(SpecMount {
            host_path: opts.workspace.clone(),
            guest_path: opts.guest_root.clone(),
            read_only: false,
        }),
    }
    nook_serve::start(&opts.home, &spec, &opts.exe).map_err(|e| ShellError::Boot(Box::new(e)))?;
    let client = SessionClient::open(&opts.home, &opts.session)?;
    Ok(Booted { client, rust })
}

/// Copies every top-level entry of the guest workspace over `dest`'s.
fn export_to(b: &mut VmBackend, dest: &Path) -> Result<(), ShellError> {
    b.ready()?;
    let client = SessionClient::open(&b.opts.home, &b.opts.session)?;
    std::fs::create_dir_all(dest).map_err(|e| ShellError::io("create", dest, e))?;
    let root = b.opts.guest_root.trim_end_matches('/').to_string();
    let (entries, _) = client.list(&root)?;
    for e in entries {
        if e.name.is_empty()
            || e.name == "."
            || e.name == ".."
            || e.name.contains('/')
            || e.name == "lost+found"
        {
            continue;
        }
        let to = dest.join(&e.name);
        if std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&to).map_err(|err| ShellError::io("replace", &to, err))?;
        }
        nook_serve::copy_out(&client, &format!("{root}/{}", e.name), &to)?;
    }
    Ok(())
}

/// Stops and removes the session, waiting until its VM is gone.
fn stop_session(opts: &VmOptions) -> Result<(), ShellError> {
    let _ = nook_serve::stop(&opts.home, &opts.session);
    match nook_serve::remove(&opts.home, &opts.session, true) {
        Ok(()) | Err(nook_serve::SessionError::NoSuchSession(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Backend for VmBackend {
    fn name(&self) -> &str {
        "vm"
    }

    fn guest_root(&self) -> &str {
        &self.opts.guest_root
    }

    fn fs(&mut self) -> &mut dyn WorkspaceFs {
        if self.guest_fs.is_some() {
            // Builtins on guest files wait for the boot.
            let client = match self.ready() {
                Ok(_) => SessionClient::open(&self.opts.home, &self.opts.session).ok(),
                Err(e) => {
                    eprintln!("nook shell: {}", nook::error_chain(&e));
                    None
                }
            };
            if let Some(g) = self.guest_fs.as_mut() {
                g.client = client;
                return g;
            }
        }
        &mut self.fs
    }

    fn export(&mut self, dest: Option<&std::path::Path>) -> Option<Result<PathBuf, ShellError>> {
        self.guest_fs.as_ref()?;
        let dest = dest
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.opts.workspace.clone());
        Some(export_to(self, &dest).map(|_| dest))
    }

    fn exec(
        &mut self,
        cmd: &GuestCommand,
        stdin: GuestStdin,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, ShellError> {
        if self.booting.as_ref().is_some_and(|h| !h.is_finished()) {
            let started = Instant::now();
            while self.booting.as_ref().is_some_and(|h| !h.is_finished()) {
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::debug!("shell: waited {:?} for the boot", started.elapsed());
        }
        let wants_rust = self.opts.image.is_none()
            && cmd
                .argv
                .first()
                .is_some_and(|p| RUST_TOOLS.contains(&p.as_str()));
        let rust_now = self.ready()?.rust;
        if wants_rust && !rust_now {
            self.switch_to_rust()?;
        }
        let signals = self.signals.clone();
        let session = self.ready()?;
        remote::run(&session.client, cmd, stdin, stdout, stderr, &signals)
    }

    fn commands(&mut self) -> Vec<String> {
        if let Some(c) = &self.commands {
            return c.clone();
        }
        let booting = self.booting.as_ref().is_some_and(|h| !h.is_finished());
        if booting || self.booting.is_none() && self.session.is_none() {
            return Vec::new();
        }
        let Ok(session) = self.ready() else {
            return Vec::new();
        };
        let cmd = GuestCommand {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "IFS=:; for d in $PATH; do ls \"$d\" 2>/dev/null; done".into(),
            ],
            env: Vec::new(),
            cwd: "/".into(),
            tty: false,
            timeout_ms: Some(10_000),
        };
        let mut out = Vec::new();
        let quiet = Signals::default();
        let listed = remote::run(
            &session.client,
            &cmd,
            GuestStdin::Bytes(Vec::new()),
            &mut out,
            &mut std::io::sink(),
            &quiet,
        );
        let mut names: Vec<String> = match listed {
            Ok(0) => String::from_utf8_lossy(&out)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
            _ => return Vec::new(),
        };
        names.sort();
        names.dedup();
        self.commands = Some(names.clone());
        names
    }

    fn shutdown(&mut self) -> Result<(), ShellError> {
        // A boot still under way finishes first, so no VM is left behind.
        if let Some(handle) = self.booting.take() {
            if let Ok(Ok(b)) = handle.join() {
                self.session = Some(b);
            }
        }
        if self.opts.stop_on_exit && self.session.take().is_some() {
            stop_session(&self.opts)?;
        }
        Ok(())
    }
}
