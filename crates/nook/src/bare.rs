//! Booting a kernel with no agent (`nook boot`): the serial console goes to
//! stdout, and the result says how the guest ended.
//!
//! On `kvm` the VMM writes COM1 straight to stdout; when the VM ends,
//! [`BareExit::exit_process`] exits at once (`KvmVm::exit_process`): the
//! vCPU threads go with the process, and a forked helper holds the KVM VM
//! fd until the process is gone, so the slow release of the VM is not
//! waited for. On `qemu` the guest runs in QEMU `microvm` (`-no-reboot`),
//! started paused so that QMP is ready before the first guest instruction;
//! the console log is copied to stdout as it grows, and the `SHUTDOWN`
//! event's `reason` tells a power-off (`guest-shutdown`) from a reset
//! (`guest-reset`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nook_qemu::{Accel, QemuConfig, QemuVm, QmpError};
use nook_vmm::{ExitReason, SerialSink};

use crate::config::EngineKind;
use crate::engine::select::{select_engine, EngineChoice};
use crate::error::VmError;
use crate::exit_code;

/// What to boot.
#[derive(Debug, Clone)]
pub struct BareConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub engine: EngineKind,
    /// Stop the guest after this long ([`BareEnding::TimedOut`]).
    pub timeout: Option<Duration>,
    /// Where the KVM probe's verdict is cached (`NOOK_HOME`).
    pub home: PathBuf,
}

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareEnding {
    /// It powered off.
    PowerOff,
    /// It reset the machine (i8042 `0xfe`, ACPI reset; on qemu also a triple fault).
    Reset,
    /// A vCPU triple-faulted (kvm only: QEMU reports a triple fault as a reset).
    TripleFault,
    /// It was still running after the timeout, and was stopped.
    TimedOut,
}

impl BareEnding {
    /// Power-off 0, reset 3, triple fault 4, timeout 124 (`nook boot`'s codes).
    pub fn exit_code(self) -> i32 {
        match self {
            BareEnding::PowerOff => 0,
            BareEnding::Reset => 3,
            BareEnding::TripleFault => 4,
            BareEnding::TimedOut => exit_code::TIMEOUT,
        }
    }
}

/// Why a bare boot failed.
#[derive(Debug, thiserror::Error)]
pub enum BareBootError {
    #[error("cannot choose an engine")]
    Engine(#[source] VmError),
    #[error("the kvm engine failed")]
    Kvm(#[source] nook_vmm::VmmError),
    #[error("the guest stopped on kvm (vcpu {vcpu}): {detail}")]
    KvmInternal {
        vcpu: u8,
        detail: nook_vmm::VcpuFault,
    },
    #[error("the qemu engine failed")]
    Qemu(#[source] nook_qemu::QemuError),
    #[error("qemu ended the guest for an unexpected reason: {0}")]
    QemuReason(String),
    #[error("the vm ended for an unexpected reason: {0}")]
    Unexpected(String),
    #[error("cannot resolve {path}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A guest that ended, and what is left of its VM.
#[derive(Debug)]
pub struct BareExit {
    pub ending: BareEnding,
    /// The ended kvm VM, whose release [`BareExit::exit_process`] leaves
    /// to process exit.
    kvm: Option<nook_vmm::KvmVm>,
}

impl BareExit {
    /// Flushes stdout and exits the process with `code` at once, without
    /// waiting for the kernel to release the VM.
    pub fn exit_process(self, code: i32) -> ! {
        let _ = std::io::stdout().flush();
        match self.kvm {
            Some(vm) => vm.exit_process(code),
            None => std::process::exit(code),
        }
    }
}

/// Boots `cfg` with its console on stdout and waits for the guest to end.
pub fn boot_bare(cfg: &BareConfig) -> Result<BareExit, BareBootError> {
    // QEMU runs in its run directory: relative paths must not mean
    // something else there.
    let mut cfg = cfg.clone();
    cfg.kernel = absolute(&cfg.kernel)?;
    cfg.initrd = cfg.initrd.as_deref().map(absolute).transpose()?;
    let cfg = &cfg;
    // Explicit kvm needs no probe: the VMM reports an unusable /dev/kvm itself.
    let choice = if cfg.engine == EngineKind::Kvm {
        None
    } else {
        Some(select_engine(cfg.engine, &cfg.home).map_err(BareBootError::Engine)?)
    };
    match choice {
        None | Some(EngineChoice::Kvm { .. }) => boot_kvm(cfg),
        Some(EngineChoice::Qemu { kvm_accel, .. }) => {
            boot_qemu(cfg, kvm_accel).map(|ending| BareExit { ending, kvm: None })
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, BareBootError> {
    std::path::absolute(path).map_err(|source| BareBootError::Path {
        path: path.to_path_buf(),
        source,
    })
}

fn boot_kvm(cfg: &BareConfig) -> Result<BareExit, BareBootError> {
    let mut kc = nook_vmm::KvmConfig::new(&cfg.kernel);
    kc.initrd = cfg.initrd.clone();
    kc.cmdline = cfg.cmdline.clone();
    kc.memory_mib = cfg.memory_mib;
    kc.vcpus = cfg.vcpus;
    kc.serial = SerialSink::Stdout;
    let mut vm = nook_vmm::KvmVm::start(kc).map_err(BareBootError::Kvm)?;
    let ending = match vm.wait_exit(cfg.timeout) {
        None => {
            vm.stop();
            BareEnding::TimedOut
        }
        Some(Err(e)) => return Err(BareBootError::Kvm(e)),
        Some(Ok(reason)) => match reason {
            ExitReason::PowerOff => BareEnding::PowerOff,
            ExitReason::Reset => BareEnding::Reset,
            ExitReason::TripleFault => BareEnding::TripleFault,
            ExitReason::InternalError { vcpu, detail } => {
                return Err(BareBootError::KvmInternal { vcpu, detail })
            }
            // Stopped (nobody else stops this VM) and future reasons.
            other => return Err(BareBootError::Unexpected(format!("{other:?}"))),
        },
    };
    Ok(BareExit {
        ending,
        kvm: Some(vm),
    })
}

/// Per-run directory for QEMU's console log and stderr, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> Result<Self, BareBootError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("nook-boot-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| BareBootError::RunDir {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies what was appended to the console log since the last call.
struct ConsoleTail {
    file: Option<File>,
    buf: Vec<u8>,
}

impl ConsoleTail {
    fn pump(&mut self, path: &Path, out: &mut impl Write) {
        if self.file.is_none() {
            self.file = File::open(path).ok();
        }
        let Some(f) = &mut self.file else { return };
        self.buf.clear();
        if f.read_to_end(&mut self.buf).is_ok() && !self.buf.is_empty() {
            let _ = out.write_all(&self.buf);
            let _ = out.flush();
        }
    }
}

const POLL: Duration = Duration::from_millis(10);

fn boot_qemu(cfg: &BareConfig, kvm_accel: bool) -> Result<BareEnding, BareBootError> {
    let binary = nook_qemu::locate_qemu().map_err(BareBootError::Qemu)?;
    let dir = RunDir::create()?;
    let accel = if kvm_accel { Accel::Kvm } else { Accel::Tcg };
    let mut qc = QemuConfig::new(binary, accel, &cfg.kernel, &dir.0);
    // The host TSC frequency is measured once per host boot, not per VM.
    qc.tsc_cache = dir.0.parent().map(|d| d.join(nook_qemu::TSC_CACHE_FILE));
    qc.initrd = cfg.initrd.clone();
    qc.cmdline = cfg.cmdline.clone();
    qc.memory_mib = cfg.memory_mib;
    qc.vcpus = cfg.vcpus;
    qc.rng = false;
    if accel == Accel::Kvm {
        // Some nested KVMs refuse the MSR behind this feature.
        qc.cpu_model = Some("host,-arch-capabilities".into());
    }
    // Paused until QMP is negotiated: QMP only reports events after that.
    qc.extra_args = vec!["-S".into()];
    let mut vm = QemuVm::start(qc).map_err(BareBootError::Qemu)?;
    vm.qmp_execute("cont", None).map_err(BareBootError::Qemu)?;
    let started = Instant::now();
    let mut console = ConsoleTail {
        file: None,
        buf: Vec::new(),
    };
    let mut stdout = std::io::stdout().lock();
    let reason = loop {
        console.pump(vm.console_log(), &mut stdout);
        if cfg.timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = vm.kill();
            console.pump(vm.console_log(), &mut stdout);
            return Ok(BareEnding::TimedOut);
        }
        let qmp = vm.qmp().map_err(BareBootError::Qemu)?;
        match qmp.wait_event("SHUTDOWN", POLL) {
            Ok(ev) => {
                break ev
                    .data
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("")
                    .to_owned()
            }
            Err(QmpError::Timeout { .. }) => {}
            Err(QmpError::Closed { .. }) => {
                // QEMU went away without a SHUTDOWN event.
                console.pump(vm.console_log(), &mut stdout);
                return Err(BareBootError::Qemu(vm.boot_failure(started.elapsed())));
            }
            Err(source) => {
                let pid = vm.pid();
                return Err(BareBootError::Qemu(nook_qemu::QemuError::Qmp {
                    pid,
                    source,
                }));
            }
        }
    };
    // With -no-reboot QEMU exits right after the event.
    let _ = vm.wait_timeout(Duration::from_secs(2));
    let _ = vm.kill();
    console.pump(vm.console_log(), &mut stdout);
    match reason.as_str() {
        "guest-shutdown" => Ok(BareEnding::PowerOff),
        "guest-reset" => Ok(BareEnding::Reset),
        other => Err(BareBootError::QemuReason(other.to_owned())),
    }
}
