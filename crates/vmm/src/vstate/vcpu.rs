//! vCPUs: configuration, the run loop on `nook-vcpu{N}` threads, and the
//! kick that gets a thread out of `KVM_RUN`.
//!
//! Kicking: the thread stores a pointer to its `kvm_run` area in a
//! thread-local before it first checks the stop flag. [`kick`] sends
//! [`kick_signal`] to the thread; the handler sets `immediate_exit`, so a
//! `KVM_RUN` that is running returns `EINTR` and one about to start returns
//! at once. The loop then sees the stop flag, which is set before any kick.

use std::cell::Cell;
use std::sync::{Arc, Once};

use kvm_bindings::{kvm_run, CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use libc::{c_int, c_void, siginfo_t};
use nook_seccomp::ThreadFilter;
use vm_memory::GuestMemoryMmap;

use super::exit::{ExitReason, ExitState, Outcome};
use super::fault::{FaultKind, VcpuFault};
use super::pause::PauseControl;
use crate::arch::x86_64::cpuid::vcpu_cpuid;
use crate::arch::x86_64::regs::{self, EntryMode, RegsError};
use crate::devices::bus::{Bus, BusWrite};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM refused to create the vCPU.
    #[error("cannot create vcpu {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// Setting CPUID failed.
    #[error("cannot set cpuid of vcpu {0}")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    /// Register set-up failed.
    #[error("cannot set up registers of vcpu {0}")]
    Regs(u8, #[source] RegsError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vcpu kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Creates vCPU `index` (its configuration comes later: a boot's
/// [`configure_vcpu`] or a restored state).
pub fn create_vcpu(vm: &VmFd, index: u8) -> Result<VcpuFd, VcpuError> {
    vm.create_vcpu(u64::from(index))
        .map_err(|e| VcpuError::Create(index, e))
}

/// Configures the new vCPU `index` of `count` for a boot. Only the boot
/// vCPU (0) gets entry registers; the others wait for INIT/SIPI in the
/// in-kernel LAPIC.
pub fn configure_vcpu(
    fd: &VcpuFd,
    supported: &CpuId,
    index: u8,
    count: u8,
    boot: (EntryMode, u64),
) -> Result<(), VcpuError> {
    fd.set_cpuid2(&vcpu_cpuid(supported, index, count))
        .map_err(|e| VcpuError::Cpuid(index, e))?;
    let r = |e| VcpuError::Regs(index, e);
    regs::setup_msrs(fd).map_err(r)?;
    regs::setup_fpu(fd).map_err(r)?;
    regs::setup_lapic(fd).map_err(r)?;
    if index == 0 {
        let (mode, entry) = boot;
        regs::setup_sregs(fd, mode).map_err(r)?;
        regs::setup_regs(fd, mode, entry).map_err(r)?;
    }
    Ok(())
}

/// The real-time signal used to kick vCPU threads (`SIGRTMIN + 1`).
pub fn kick_signal() -> c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set by this thread to its own mapped
        // `kvm_run` and cleared before the mapping goes away; a volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick);
    });
    result.map_err(VcpuError::Signal)
}

/// Interrupts `thread`'s `KVM_RUN` (see the module docs).
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread that has not been joined yet (the
    // `ExitState` protocol guarantees it) and the signal has a handler.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// A vCPU ready to run on its own thread.
pub struct Vcpu {
    /// vCPU index (also its APIC id).
    pub index: u8,
    /// The vCPU fd.
    pub fd: VcpuFd,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the VM's end is recorded.
    pub(crate) exit: Arc<ExitState>,
    /// Pause requests (snapshots).
    pub(crate) pause: Arc<PauseControl>,
    /// Guest memory (to read the code at a fault).
    pub(crate) mem: GuestMemoryMmap,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("index", &self.index).finish()
    }
}

impl Vcpu {
    /// The thread body: runs the guest until the VM ends.
    pub fn run(&mut self) {
        let confined = crate::assemble::confine(
            &nook_seccomp::ThreadConfinement::nothing(),
            ThreadFilter::Vcpu,
            "vcpu",
        );
        if let Err(e) = confined {
            tracing::error!("vmm: vcpu{}: {e}", self.index);
            self.exit.finish(Outcome::Failed {
                what: format!("confinement of vcpu {}", self.index),
                errno: libc::EPERM,
            });
            return;
        }
        let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
        // A kick aimed at this thread's previous VM may have left the flag set.
        self.fd.set_kvm_immediate_exit(0);
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        let index = self.index;
        while !self.exit.should_stop() {
            if self.pause.requested() {
                self.pause.park(index, &mut self.fd, &self.exit);
                continue;
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => match self.pio.write(u64::from(port), data) {
                    BusWrite::Exit(reason) => Some(Outcome::Exit(reason)),
                    BusWrite::Done => None,
                    BusWrite::Unclaimed => {
                        tracing::trace!("vmm: vcpu{index}: write to unclaimed port {port:#x}");
                        None
                    }
                },
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        data.fill(0);
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => match self.mmio.write(addr, data) {
                    BusWrite::Exit(reason) => Some(Outcome::Exit(reason)),
                    BusWrite::Done | BusWrite::Unclaimed => None,
                },
                // Only without an in-kernel LAPIC; keep going.
                Ok(VcpuExit::Hlt) => None,
                Ok(VcpuExit::Shutdown) => Some(Outcome::Exit(ExitReason::TripleFault)),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(Outcome::Exit(ExitReason::PowerOff)),
                    KVM_SYSTEM_EVENT_RESET => Some(Outcome::Exit(ExitReason::Reset)),
                    other => Some(self.fault(VcpuFault::new(FaultKind::SystemEvent(other)))),
                },
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    Some(self.fault(VcpuFault::new(FaultKind::FailEntry { reason })))
                }
                Ok(VcpuExit::InternalError) => {
                    let fault = VcpuFault::internal(self.fd.get_kvm_run());
                    Some(self.fault(fault))
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    Some(self.fault(VcpuFault::new(FaultKind::UnhandledExit(what))))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(Outcome::Failed {
                    what: format!("KVM_RUN on vcpu {index}"),
                    errno: e.errno(),
                }),
            };
            if let Some(o) = outcome {
                self.exit.finish(o);
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// The outcome of `fault` on this vCPU, with the guest's RIP and code.
    fn fault(&self, mut fault: VcpuFault) -> Outcome {
        fault.read_guest(&self.fd, &self.mem);
        tracing::debug!("vmm: vcpu{}: {fault}", self.index);
        Outcome::Exit(ExitReason::InternalError {
            vcpu: self.index,
            detail: fault,
        })
    }
}
