//! `nook boot`: boot a kernel with no agent, copy its serial console to
//! stdout, and exit with a code that says how the guest ended.
//!
//! | exit code | the guest ... |
//! |---|---|
//! | 0   | powered off |
//! | 3   | reset the machine (i8042 `0xfe`, ACPI reset; on qemu also a triple fault) |
//! | 4   | triple-faulted (kvm only: QEMU reports a triple fault as a reset) |
//! | 124 | was still running after `--timeout` (nook stopped it) |
//! | 125 | could not be booted, or the engine failed |
//!
//! On `kvm` the VMM writes COM1 straight to stdout; when the VM ends, nook
//! exits at once ([`nook_vmm::KvmVm::exit_process`]): the vCPU threads go with
//! the process, and a forked helper holds the KVM VM fd until the process
//! is gone, so the slow release of the VM (15–25 ms here) is not waited for. On `qemu` the guest runs in
//! QEMU `microvm` (`-no-reboot`), started paused so that QMP is ready before
//! the first guest instruction; the console log is copied to stdout as it
//! grows, and the `SHUTDOWN` event's `reason` tells a power-off
//! (`guest-shutdown`) from a reset (`guest-reset`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use nook::{EngineChoice, EngineKind};
use nook_qemu::{Accel, QemuConfig, QemuVm, QmpError};
use nook_vmm::{ExitReason, SerialSink};

use crate::exit::{report, NOOK_FAILED, TIMEOUT};

/// The guest powered off.
pub const POWEROFF: i32 = 0;
/// The guest reset the machine.
pub const RESET: i32 = 3;
/// A vCPU triple-faulted.
pub const TRIPLE_FAULT: i32 = 4;

/// Exit codes, as shown by `nook boot --help`.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 the guest powered off; 3 it reset the machine \
(on qemu also a triple fault); 4 a vCPU triple-faulted (kvm); 124 --timeout passed and nook \
stopped the guest; 125 the guest could not be booted or the engine failed.";

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootEngine {
    /// kvm where it runs guest kernels at hardware speed, else qemu.
    Auto,
    /// nook's own VMM.
    Kvm,
    /// QEMU microvm (KVM-accelerated at hardware speed, else TCG).
    Qemu,
}

#[derive(Args, Debug)]
pub struct BootArgs {
    /// Kernel to boot: bzImage, PVH ELF (vmlinux) or, on kvm, a plain 64-bit ELF.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        long,
        default_value = "console=ttyS0 reboot=k panic=-1",
        value_name = "STR"
    )]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub memory: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u8,
    /// Engine.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: BootEngine,
    /// Stop the guest after this many seconds; nook then exits 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// How the guest ended, engine-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    PowerOff,
    Reset,
    TripleFault,
    TimedOut,
}

impl Ending {
    fn code(self) -> i32 {
        match self {
            Self::PowerOff => POWEROFF,
            Self::Reset => RESET,
            Self::TripleFault => TRIPLE_FAULT,
            Self::TimedOut => TIMEOUT,
        }
    }
}

/// Why `nook boot` failed.
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error("invalid --timeout {0}: give a positive number of seconds")]
    Timeout(f64),
    #[error("cannot choose an engine")]
    Engine(#[source] nook::VmError),
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
    #[error("cannot create run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn boot(args: BootArgs) -> i32 {
    match run(args) {
        Ok(ending) => ending.code(),
        Err(e) => {
            let _ = std::io::stdout().flush();
            report(&e);
            NOOK_FAILED
        }
    }
}

fn run(args: BootArgs) -> Result<Ending, BootError> {
    let timeout = match args.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => return Err(BootError::Timeout(t)),
    };
    let kind = match args.engine {
        BootEngine::Auto => EngineKind::Auto,
        BootEngine::Kvm => EngineKind::Kvm,
        BootEngine::Qemu => EngineKind::Qemu,
    };
    // Explicit kvm needs no probe: nook_vmm reports an unusable /dev/kvm itself.
    let choice = if kind == EngineKind::Kvm {
        None
    } else {
        Some(nook::select_engine(kind, &nook::default_home()).map_err(BootError::Engine)?)
    };
    match choice {
        None | Some(EngineChoice::Kvm { .. }) => boot_kvm(&args, timeout),
        Some(EngineChoice::Qemu { kvm_accel, .. }) => boot_qemu(&args, timeout, kvm_accel),
    }
}

fn boot_kvm(args: &BootArgs, timeout: Option<Duration>) -> Result<Ending, BootError> {
    let mut cfg = nook_vmm::KvmConfig::new(&args.kernel);
    cfg.initrd = args.initrd.clone();
    cfg.cmdline = args.cmdline.clone();
    cfg.memory_mib = args.memory;
    cfg.vcpus = args.cpus;
    cfg.serial = SerialSink::Stdout;
    let mut vm = nook_vmm::KvmVm::start(cfg).map_err(BootError::Kvm)?;
    let ending = match vm.wait_exit(timeout) {
        None => {
            vm.stop();
            Ending::TimedOut
        }
        Some(Err(e)) => return Err(BootError::Kvm(e)),
        Some(Ok(reason)) => match reason {
            ExitReason::PowerOff => Ending::PowerOff,
            ExitReason::Reset => Ending::Reset,
            ExitReason::TripleFault => Ending::TripleFault,
            ExitReason::InternalError { vcpu, detail } => {
                return Err(BootError::KvmInternal { vcpu, detail })
            }
            // Stopped (nobody else stops this VM) and future reasons.
            other => return Err(BootError::Unexpected(format!("{other:?}"))),
        },
    };
    let _ = std::io::stdout().flush();
    // The process's work ends with the VM: exit now, leaving the VM's
    // teardown (threads, KVM fds) to process exit and a helper.
    vm.exit_process(ending.code())
}

/// Per-run directory for QEMU's console log and stderr, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> Result<Self, BootError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("nook-boot-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| BootError::RunDir {
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

fn boot_qemu(
    args: &BootArgs,
    timeout: Option<Duration>,
    kvm_accel: bool,
) -> Result<Ending, BootError> {
    let binary = nook_qemu::locate_qemu().map_err(BootError::Qemu)?;
    let dir = RunDir::create()?;
    let accel = if kvm_accel { Accel::Kvm } else { Accel::Tcg };
    let mut cfg = QemuConfig::new(binary, accel, &args.kernel, &dir.0);
    cfg.initrd = args.initrd.clone();
    cfg.cmdline = args.cmdline.clone();
    cfg.memory_mib = args.memory;
    cfg.vcpus = args.cpus;
    cfg.rng = false;
    if accel == Accel::Kvm {
        // Some nested KVMs refuse the MSR behind this feature.
        cfg.cpu_model = Some("host,-arch-capabilities".into());
    }
    // Paused until QMP is negotiated: QMP only reports events after that.
    cfg.extra_args = vec!["-S".into()];
    let mut vm = QemuVm::start(cfg).map_err(BootError::Qemu)?;
    vm.qmp_execute("cont", None).map_err(BootError::Qemu)?;
    let started = Instant::now();
    let mut console = ConsoleTail {
        file: None,
        buf: Vec::new(),
    };
    let mut stdout = std::io::stdout().lock();
    let reason = loop {
        console.pump(vm.console_log(), &mut stdout);
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = vm.kill();
            console.pump(vm.console_log(), &mut stdout);
            return Ok(Ending::TimedOut);
        }
        let qmp = vm.qmp().map_err(BootError::Qemu)?;
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
                return Err(BootError::Qemu(vm.boot_failure(started.elapsed())));
            }
            Err(source) => {
                let pid = vm.pid();
                return Err(BootError::Qemu(nook_qemu::QemuError::Qmp { pid, source }));
            }
        }
    };
    // With -no-reboot QEMU exits right after the event.
    let _ = vm.wait_timeout(Duration::from_secs(2));
    let _ = vm.kill();
    console.pump(vm.console_log(), &mut stdout);
    match reason.as_str() {
        "guest-shutdown" => Ok(Ending::PowerOff),
        "guest-reset" => Ok(Ending::Reset),
        other => Err(BootError::QemuReason(other.to_owned())),
    }
}
