//! A running VM with a connected agent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nook_assets::{AssetsConfig, KernelSource};
use nook_proto::{GuestHello, HostMsg, CONTROL_STREAM};

use crate::config::VmConfig;
use crate::conn::Conn;
use crate::ending::SharedMachine;
use crate::engine::select::EngineChoice;
use crate::engine::Machine;
use crate::error::VmError;
use crate::exec::ExecBuilder;
use crate::storage::TempFile;

/// Kernel command line every nook guest gets. `quiet` keeps the console
/// (an emulated UART: every byte is a VM exit) nearly silent during boot.
/// `panic=-1` and `reboot=t` make a panic or a reboot end the machine at
/// once by a triple fault, which both engines treat as the end of the VM:
/// the kernel's default reboot chain (ACPI, keyboard controller, BIOS)
/// sometimes fell through to a BIOS jump on QEMU's `microvm` and spun
/// forever instead of resetting.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t rdinit=/init";

/// Kernel modules every guest loads (their dependencies come along): the
/// virtio-mmio transport, the console carrying the agent channel, block
/// devices, overlayfs for image roots, the entropy device and virtio-fs for shares.
pub(crate) const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_rng",
    "overlay",
    "virtiofs",
];

/// The guest driver of the memory balloon, loaded only by VMs that have
/// one ([`VmConfig::balloon`]).
pub(crate) const BALLOON_MODULE: &str = "virtio_balloon";

/// How many console lines an error message shows.
pub(crate) const CONSOLE_TAIL: usize = 30;

/// A running microVM. Dropping it kills the VM.
#[derive(Debug)]
pub struct Vm {
    pub(crate) machine: SharedMachine,
    pub(crate) conn: Arc<Conn>,
    pub(crate) _run_dir: RunDir,
    pub(crate) choice: EngineChoice,
    pub(crate) boot_time: Duration,
    pub(crate) cfg: VmConfig,
    /// The scratch disk of an image root, deleted after the VM.
    pub(crate) _scratch: Option<TempFile>,
    /// Locks on its volumes, released after the machine is gone.
    pub(crate) _locks: Vec<crate::lock::VolumeLock>,
    /// The network back end (dropped after the machine: its published
    /// ports close with the VM).
    pub(crate) net: Option<nook_net::NetBackend>,
    pub(crate) origin: VmOrigin,
}

/// How a [`Vm`] came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOrigin {
    /// Its kernel booted.
    Booted,
    /// Its kernel booted, and the booted state became its configuration's
    /// template.
    BootedMadeTemplate,
    /// Restored from its configuration's template snapshot.
    Template,
    /// Restored from a named snapshot ([`Vm::restore`]).
    Snapshot,
}

/// A runtime directory that removes itself.
#[derive(Debug)]
pub(crate) struct RunDir(pub(crate) PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Shares `machine` between a VM and its agent connection, which asks it
/// how the guest ended when the channel breaks.
pub(crate) fn share_machine(machine: Box<dyn Machine>, conn: &Conn) -> SharedMachine {
    let shared: SharedMachine = Arc::new(Mutex::new(machine));
    conn.watch(&shared);
    shared
}

pub(crate) fn make_run_dir() -> Result<RunDir, VmError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // Unix socket paths are limited to 108 bytes: keep this short. A
    // memory-backed directory, because a VM that will be snapshotted keeps
    // its RAM in a file here.
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| is_world_writable(p)))
        .unwrap_or_else(std::env::temp_dir);
    let path = base.join(format!(
        "nook-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&path).map_err(|source| VmError::RunDir {
        path: path.clone(),
        source,
    })?;
    Ok(RunDir(path))
}

/// A directory anyone may create entries in, like `/dev/shm` (mode 1777).
fn is_world_writable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o002 != 0)
}

/// Finds the guest agent: `NOOK_AGENT`, the config, or next to the running
/// executable (where `scripts/setup` builds it). Only a statically linked
/// agent can be a guest's `/init`: a dynamically linked `nook-agent` (what a
/// plain `cargo build` leaves in `target/release/`) is skipped, and the
/// error names it when nothing else is found. An agent given explicitly is
/// checked when the assets are prepared.
pub(crate) fn find_agent(cfg: &VmConfig) -> Result<PathBuf, VmError> {
    if let Some(a) = &cfg.agent {
        return Ok(a.clone());
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let mut candidates = vec![dir.join("nook-agent")];
            // A cargo target dir: target/{debug,release}/nook, the agent in
            // target/x86_64-unknown-linux-gnu/release/.
            for up in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                candidates.push(up.join("x86_64-unknown-linux-gnu/release/nook-agent"));
            }
            for c in candidates {
                if !c.is_file() {
                    searched.push(format!("{} (absent)", c.display()));
                    continue;
                }
                match std::fs::read(&c)
                    .ok()
                    .and_then(|b| nook_assets::dynamic_executable_problem(&b))
                {
                    None => return Ok(c),
                    Some(problem) => {
                        tracing::debug!("nook: skipping the agent {}: {problem}", c.display());
                        searched.push(format!("{} (skipped: {problem})", c.display()));
                    }
                }
            }
        }
    }
    Err(VmError::AgentNotFound {
        searched: searched.join("; "),
    })
}

/// The assets request this configuration makes.
pub(crate) fn assets_config(cfg: &VmConfig) -> Result<AssetsConfig, VmError> {
    let mut a = AssetsConfig::new(find_agent(cfg)?);
    a.modules = GUEST_MODULES.iter().map(|m| m.to_string()).collect();
    if cfg.net.is_some() {
        a.modules
            .extend(crate::net::NET_MODULES.iter().map(|m| m.to_string()));
    }
    if cfg.balloon.is_some() {
        a.modules.push(BALLOON_MODULE.to_string());
    }
    a.home = cfg.home.clone();
    a.progress = cfg.progress;
    if let Some(k) = &cfg.kernel {
        a.kernel = KernelSource::Local {
            kernel: k.clone(),
            modules_dir: cfg.kernel_modules.clone(),
        };
    }
    Ok(a)
}

impl Vm {
    /// Prepares assets (cached), then boots the VM and waits for the agent,
    /// or restores a clone of this configuration's template snapshot when
    /// there is one (see [`VmConfig::template`]).
    pub fn start(cfg: VmConfig) -> Result<Vm, VmError> {
        crate::boot::start(cfg)
    }

    /// Starts building a command to run in the guest.
    pub fn exec<I, S>(&self, argv: I) -> ExecBuilder<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecBuilder::new(self, argv.into_iter().map(Into::into).collect())
    }

    /// File operations in the guest (write, read, stat, list, mkdir -p,
    /// remove -r, symlink), usable from any thread while the VM runs.
    pub fn files(&self) -> crate::GuestFiles {
        crate::GuestFiles {
            conn: self.conn.clone(),
        }
    }

    /// Desktop actions on the guest's X display (screenshots, mouse,
    /// keyboard), usable from any thread while the VM runs.
    pub fn desktop(&self) -> crate::GuestDesktop {
        crate::GuestDesktop {
            conn: self.conn.clone(),
        }
    }

    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The agent's greeting: protocol version, agent version, guest kernel release.
    pub fn agent(&self) -> &GuestHello {
        &self.conn.hello
    }

    /// The engine this VM runs on and why it was chosen.
    pub fn engine(&self) -> &EngineChoice {
        &self.choice
    }

    /// Time from [`Vm::start`] (or [`Vm::restore`]) until the agent was
    /// ready for commands.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Whether the VM booted or was restored from a template or snapshot.
    pub fn origin(&self) -> VmOrigin {
        self.origin
    }

    /// The run-time defaults of the image the VM booted from.
    pub fn image_config(&self) -> Option<&nook_image::ImageConfig> {
        self.cfg.image.as_ref().map(|i| &i.config)
    }

    /// The image's default command: its Entrypoint followed by its Cmd
    /// (empty without an image, or when the image has neither).
    pub fn image_command(&self) -> Vec<String> {
        self.image_config()
            .map(|c| c.entrypoint.iter().chain(&c.cmd).cloned().collect())
            .unwrap_or_default()
    }

    /// What the VM's network did so far (`None` without a network).
    pub fn net_stats(&self) -> Option<crate::NetStats> {
        self.net.as_ref().map(|n| n.stats())
    }

    /// The VM's published ports as bound on the host (empty without a
    /// network). They close when the VM ends.
    pub fn published_ports(&self) -> &[crate::PublishedPort] {
        self.net.as_ref().map_or(&[], |n| n.published())
    }

    /// Whether a writable volume is attached: end such a VM with
    /// [`Vm::shutdown`] so the guest syncs and unmounts it first.
    pub fn has_writable_volumes(&self) -> bool {
        self.cfg.volumes.iter().any(|v| !v.read_only)
    }

    /// The guest console so far (last `lines` lines).
    pub fn console_tail(&self, lines: usize) -> String {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .console_tail(lines)
    }

    /// How the VM ended, once it has (its engine process was killed, the
    /// guest powered off); `None` while it runs.
    pub fn exited(&self) -> Option<crate::error::MachineExit> {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exited()
    }

    /// Asks the guest to sync and power off, waiting up to `grace`; then
    /// kills whatever is left.
    pub fn shutdown(self, grace: Duration) -> Result<(), VmError> {
        let _ = self.conn.send(CONTROL_STREAM, &HostMsg::Shutdown);
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        m.wait_exit(grace);
        m.kill();
        Ok(())
    }

    /// Stops the VM at once. Writes to volumes the guest has not synced are
    /// lost: use [`Vm::shutdown`] when [`Vm::has_writable_volumes`].
    pub fn stop(self) -> Result<(), VmError> {
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kill();
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Fields drop after this: the machine is gone before its run dir.
        self.machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kill();
    }
}

/// Prepares (or, with `update`, refreshes) the guest assets for `cfg`
/// without booting anything: what `nook setup` does.
pub fn prepare_assets(cfg: &VmConfig, update: bool) -> Result<nook_assets::Assets, VmError> {
    let a = assets_config(cfg)?;
    let r = if update {
        nook_assets::refresh(&a)
    } else {
        nook_assets::prepare(&a)
    };
    r.map_err(VmError::Assets)
}
