//! A running VM with a connected agent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nook_assets::{AssetsConfig, KernelSource};
use nook_proto::{GuestHello, HostMsg, CONTROL_STREAM};

use crate::config::VmConfig;
use crate::conn::{await_hello, Conn, Greeting};
use crate::engine::select::{select_engine, EngineChoice};
use crate::engine::{kvm, qemu, Machine, MachineSpec};
use crate::error::{BootFailure, VmError};
use crate::exec::ExecBuilder;
use crate::storage::{self, TempFile};

/// Kernel command line every nook guest gets. `quiet` keeps the console
/// (an emulated UART: every byte is a VM exit) nearly silent during boot.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init";

/// Kernel modules every guest loads (their dependencies come along): the
/// virtio-mmio transport, the console carrying the agent channel, block
/// devices, overlayfs for image roots, the entropy device and virtio-fs for shares.
const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_rng",
    "overlay",
    "virtiofs",
];

/// How many console lines an error message shows.
const CONSOLE_TAIL: usize = 30;

/// A running microVM. Dropping it kills the VM.
#[derive(Debug)]
pub struct Vm {
    pub(crate) machine: Mutex<Box<dyn Machine>>,
    pub(crate) conn: Arc<Conn>,
    pub(crate) _run_dir: RunDir,
    pub(crate) choice: EngineChoice,
    pub(crate) boot_time: Duration,
    pub(crate) cfg: VmConfig,
    /// The scratch disk of an image root, deleted after the VM.
    pub(crate) _scratch: Option<TempFile>,
}

/// A runtime directory that removes itself.
#[derive(Debug)]
pub(crate) struct RunDir(pub(crate) PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn make_run_dir() -> Result<RunDir, VmError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // Unix socket paths are limited to 108 bytes: keep this short.
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
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

/// Finds the guest agent: `NOOK_AGENT`, the config, or next to the running
/// executable (where `scripts/setup` installs it).
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
                if c.is_file() {
                    return Ok(c);
                }
                searched.push(c.display().to_string());
            }
        }
    }
    Err(VmError::AgentNotFound {
        searched: searched.join(", "),
    })
}

/// The assets request this configuration makes.
pub(crate) fn assets_config(cfg: &VmConfig) -> Result<AssetsConfig, VmError> {
    let mut a = AssetsConfig::new(find_agent(cfg)?);
    a.modules = GUEST_MODULES.iter().map(|m| m.to_string()).collect();
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
    /// Prepares assets (cached), boots the VM and waits for the agent.
    pub fn start(cfg: VmConfig) -> Result<Vm, VmError> {
        cfg.validate()?;
        let t0 = Instant::now();
        let assets = nook_assets::prepare(&assets_config(&cfg)?).map_err(VmError::Assets)?;
        tracing::debug!(
            "nook: assets ready in {:.2} ms (downloaded={}, built_initramfs={})",
            t0.elapsed().as_secs_f64() * 1000.0,
            assets.work.downloaded,
            assets.work.built_initramfs
        );
        let choice = select_engine(cfg.engine, &cfg.home)?;
        tracing::info!("nook: booting on {}: {}", choice.label(), choice.reason());
        if let EngineChoice::Kvm {
            hardware_speed: false,
            reason,
        } = &choice
        {
            tracing::warn!("nook: the kvm engine was {reason}");
        }
        let run_dir = make_run_dir()?;
        let plan = storage::plan(cfg.image.as_ref(), &cfg.volumes, &cfg.home.join("tmp"))
            .map_err(VmError::Storage)?;
        let mut words = plan.words.clone();
        words.shares = cfg
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| crate::share::boot_mount(i, s))
            .collect();
        let cmdline = [BASE_CMDLINE, &cfg.cmdline, &words.to_cmdline()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let spec = MachineSpec {
            kernel: assets.kernel.clone(),
            initrd: assets.initramfs.clone(),
            cmdline,
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            run_dir: run_dir.0.clone(),
            disks: plan.disks.clone(),
            shares: cfg
                .shares
                .iter()
                .enumerate()
                .map(|(i, s)| crate::share::fs_share(i, s))
                .collect(),
        };
        let mut machine: Box<dyn Machine> = match &choice {
            EngineChoice::Qemu { kvm_accel, .. } => Box::new(qemu::boot(&spec, *kvm_accel)?),
            EngineChoice::Kvm { .. } => Box::new(kvm::boot(&spec)?),
        };
        let Some(stream) = machine.take_channel() else {
            machine.kill();
            return Err(VmError::NoAgentChannel);
        };
        let cancel = cfg.cancel.clone();
        let greeting = await_hello(&stream, cfg.boot_timeout, || {
            if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Some(BootFailure::Cancelled);
            }
            machine.exited().map(BootFailure::MachineEnded)
        });
        let (hello, source) = match greeting {
            Ok(Greeting::Hello(h, s)) => (h, s),
            Ok(Greeting::Failed(cause)) => {
                machine.kill();
                return Err(VmError::Boot {
                    cause,
                    console: machine.console_tail(CONSOLE_TAIL),
                });
            }
            Err(e) => {
                machine.kill();
                return Err(e);
            }
        };
        let conn = match Conn::establish(stream, hello, source) {
            Ok(c) => c,
            Err(e) => {
                machine.kill();
                return Err(e);
            }
        };
        let boot_time = t0.elapsed();
        tracing::debug!("nook: agent ready after {boot_time:?}");
        Ok(Vm {
            machine: Mutex::new(machine),
            conn,
            _run_dir: run_dir,
            choice,
            boot_time,
            _scratch: plan.scratch,
            cfg,
        })
    }

    /// Starts building a command to run in the guest.
    pub fn exec<I, S>(&self, argv: I) -> ExecBuilder<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecBuilder::new(self, argv.into_iter().map(Into::into).collect())
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

    /// Time from [`Vm::start`] to the agent's hello.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
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
