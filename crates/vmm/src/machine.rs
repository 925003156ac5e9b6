//! The running VM handle: [`KvmVm::start`], [`KvmVm::wait`], [`KvmVm::stop`].

use std::os::fd::AsRawFd;
use std::sync::Weak;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::BootSetup;
use crate::builder;
use crate::config::KvmConfig;
use crate::devices::virtio::balloon::{BalloonControl, BalloonStats};
use crate::error::VmmError;
use crate::snapshot::memory::MemoryBacking;
use crate::snapshot::restorer::Spares;
use crate::vstate::exit::{ExitReason, ExitState, Outcome};
use crate::vstate::shell::VmShell;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::worker::JobDone;

/// A running (or ended, not yet dropped) microVM.
///
/// Threads: `nook-vcpu{N}` per vCPU and `nook-vmm` for device I/O. Every
/// way the VM ends — guest power-off, reset, triple fault, an error,
/// [`stop`](Self::stop) or drop — joins all of them and, when the `KvmVm` is
/// dropped, closes every file descriptor it opened.
///
/// Virtio devices sit at `0xd000_0000 + 0x1000 * n` with interrupt lines
/// 5, 6, 7, 9, 10, ... in this order: console (if configured), disks in
/// order, rng (if configured), net (if configured).
pub struct KvmVm {
    pub(crate) exit: std::sync::Arc<ExitState>,
    /// Each vCPU's run loop; it ends handing back the vCPU, dropped here
    /// rather than on its confined thread.
    pub(crate) vcpu_runs: Vec<JobDone<Vcpu>>,
    pub(crate) event_run: Option<JobDone<()>>,
    pub(crate) event_stop: EventFd,
    /// The KVM VM, its vCPUs and threads (`None` only while assembling).
    pub(crate) shell: Option<VmShell>,
    /// Guest memory (the shell's RAM).
    pub(crate) mem: GuestMemoryMmap,
    /// The snapshot the memory is mapped from, if restored.
    pub(crate) backing: Option<MemoryBacking>,
    pub(crate) boot: BootSetup,
    pub(crate) cmdline: String,
    pub(crate) phases: Vec<(&'static str, Duration)>,
    /// What snapshots read.
    pub(crate) snap: crate::snapshot::SnapshotHandles,
    /// Where the shell goes when the VM is dropped, to run another VM
    /// (restores through a [`crate::KvmRestorer`]); closed otherwise.
    pub(crate) recycle: Option<Weak<Spares>>,
    /// The host's handle on the balloon device, if the VM has one.
    pub(crate) balloon: Option<std::sync::Arc<BalloonControl>>,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("boot", &self.boot)
            .field("vcpus", &self.snap.vcpus)
            .field("ended", &self.exit.outcome().is_some())
            .finish()
    }
}

impl KvmVm {
    /// Builds and starts a VM. Returns once the vCPUs are running.
    pub fn start(cfg: KvmConfig) -> Result<KvmVm, VmmError> {
        builder::build(cfg)
    }

    /// Blocks until the VM ends, tears it down and says why it ended.
    /// Calling it again returns the same answer.
    pub fn wait(&mut self) -> Result<ExitReason, VmmError> {
        let outcome = self.exit.wait(None);
        self.teardown();
        outcome_to_result(outcome)
    }

    /// Like [`wait`](Self::wait) but gives up after `timeout`, leaving the
    /// VM running (`Ok(None)`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitReason>, VmmError> {
        match self.exit.wait(Some(timeout)) {
            None => Ok(None),
            some => {
                self.teardown();
                outcome_to_result(some).map(Some)
            }
        }
    }

    /// Waits (at most `timeout`, if given) for the VM to end and says why,
    /// without tearing it down: vCPU and device threads may still be
    /// winding down. Meant for a process that exits as soon as its VM does
    /// (`nook boot`) and leaves the teardown to the kernel's process exit;
    /// anyone else wants [`wait`](Self::wait). `None` on timeout.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<Result<ExitReason, VmmError>> {
        let outcome = self.exit.wait(timeout)?;
        Some(outcome_to_result(Some(outcome)))
    }

    /// Ends the process with `code` without waiting for KVM to release the
    /// VM: a forked helper holds the VM's fd and releases it once the
    /// process is gone (see `detach.rs`; 15–25 ms saved per process where
    /// destroying the in-kernel irqchip and PIT is slow). For a process whose
    /// work ends with its VM (`nook boot`); flush your output first.
    pub fn exit_process(self, code: i32) -> ! {
        match &self.shell {
            Some(s) => crate::detach::exit_leaving_teardown(s.fds.fd.as_raw_fd(), &self.mem, code),
            None => std::process::exit(code),
        }
    }

    /// Kills the VM now (if it is still running) and joins its threads. The
    /// exit reason becomes [`ExitReason::Stopped`] unless it had already
    /// ended.
    pub fn stop(&mut self) {
        self.exit.finish(Outcome::Exit(ExitReason::Stopped));
        self.teardown();
    }

    /// Kernel image format and entry mode used.
    pub fn boot_setup(&self) -> BootSetup {
        self.boot
    }

    /// The full kernel command line given to the guest.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// How long each step of [`start`](Self::start) took, in order.
    pub fn start_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Asks the guest to put `balloon_mib` MiB into the balloon (0 empties
    /// it): the device's target changes and a configuration interrupt
    /// tells the driver, which inflates or deflates at its own pace.
    pub fn set_balloon(&self, balloon_mib: u32) -> Result<(), VmmError> {
        let control = self.balloon.as_ref().ok_or(VmmError::NoBalloon)?;
        control.set_target_mib(balloon_mib);
        Ok(())
    }

    /// The balloon's target and size, the guest's statistics and what the
    /// device discarded; `None` without a balloon.
    pub fn balloon_stats(&self) -> Option<BalloonStats> {
        self.balloon.as_ref().map(|c| c.stats())
    }

    /// Bytes of guest memory resident in host RAM now.
    pub fn resident_memory_bytes(&self) -> std::io::Result<u64> {
        crate::vstate::memory::resident_bytes(&self.mem)
    }

    /// Guest memory (for inspection by tests and tools).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Waits for every vCPU run loop and the event loop to end, and puts
    /// the vCPUs back into the shell. Only called after the outcome is set
    /// (so every vCPU thread has been kicked).
    fn teardown(&mut self) {
        debug_assert!(self.exit.outcome().is_some());
        for (index, run) in self.vcpu_runs.drain(..).enumerate() {
            // `None`: the run loop panicked and the vCPU went with it.
            let fd = run.wait().map(|vcpu| vcpu.fd);
            if let Some(slot) = self.shell.as_mut().and_then(|s| s.vcpus.get_mut(index)) {
                *slot = fd;
            }
        }
        if let Some(run) = self.event_run.take() {
            let _ = self.event_stop.write(1);
            let _ = run.wait();
        }
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.stop();
        let spares = self.recycle.as_ref().and_then(Weak::upgrade);
        if let (Some(spares), Some(shell)) = (spares, self.shell.take()) {
            // The devices still hold guest memory but no thread runs them.
            spares.put_back(shell);
        }
    }
}

fn outcome_to_result(outcome: Option<Outcome>) -> Result<ExitReason, VmmError> {
    match outcome {
        Some(Outcome::Exit(reason)) => Ok(reason),
        Some(Outcome::Failed { what, errno }) => Err(VmmError::Failed {
            what,
            source: std::io::Error::from_raw_os_error(errno),
        }),
        None => Ok(ExitReason::Stopped),
    }
}

/// Boots `cfg` and waits for it to end: the whole life of a VM in one call
/// (what `nook boot` needs; use [`SerialSink::Stdout`](crate::SerialSink)
/// to see the console).
pub fn boot(cfg: KvmConfig) -> Result<ExitReason, VmmError> {
    KvmVm::start(cfg)?.wait()
}
