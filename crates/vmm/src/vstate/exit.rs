//! How a VM ends, and the shared state through which vCPU threads, the
//! event loop and the [`crate::KvmVm`] handle agree on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::fault::VcpuFault;
use crate::devices::lock;

/// Why a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The guest powered off: it wrote S5 to the ACPI sleep control register
    /// (port 0x600; Linux `poweroff`), or KVM reported a shutdown system
    /// event.
    PowerOff,
    /// The guest reset the machine: i8042 command 0xfe on port 0x64 (Linux
    /// `reboot=k`), the ACPI reset register (port 0x602 ← 1; Linux
    /// `reboot=a`), or a KVM reset system event. The VMM does not reboot.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN; also Linux `reboot=t`).
    TripleFault,
    /// The host stopped the VM ([`crate::KvmVm::stop`] or drop).
    Stopped,
    /// KVM could not run or emulate the guest any further
    /// (KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_FAIL_ENTRY, or an exit this VMM
    /// does not handle).
    InternalError {
        /// The vCPU that hit it.
        vcpu: u8,
        /// What KVM reported, with the guest's RIP and the code there.
        detail: VcpuFault,
    },
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => f.write_str("the guest powered off"),
            Self::Reset => f.write_str("the guest reset the machine"),
            Self::TripleFault => f.write_str("a vcpu triple-faulted"),
            Self::Stopped => f.write_str("the host stopped the vm"),
            Self::InternalError { vcpu, detail } => write!(f, "vcpu {vcpu} stopped: {detail}"),
        }
    }
}

/// Outcome stored by whoever ends the VM first.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Exit(ExitReason),
    /// A host-side operation failed (a vCPU ioctl or the event loop).
    Failed {
        what: String,
        errno: i32,
    },
}

struct Inner {
    outcome: Option<Outcome>,
    vcpu_threads: Vec<libc::pthread_t>,
}

/// Shared end-of-VM state.
pub(crate) struct ExitState {
    stop: AtomicBool,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl std::fmt::Debug for ExitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitState")
            .field("stop", &self.should_stop())
            .finish()
    }
}

impl ExitState {
    pub(crate) fn new() -> Self {
        Self {
            stop: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                outcome: None,
                vcpu_threads: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }

    /// Whether vCPUs must leave their run loops.
    pub(crate) fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records `outcome` if it is the first, and kicks every vCPU thread out
    /// of KVM_RUN.
    pub(crate) fn finish(&self, outcome: Outcome) {
        let mut g = lock(&self.inner);
        if g.outcome.is_some() {
            return;
        }
        g.outcome = Some(outcome);
        self.stop.store(true, Ordering::SeqCst);
        for &t in &g.vcpu_threads {
            super::vcpu::kick(t);
        }
        self.cv.notify_all();
    }

    /// Kicks every registered vCPU thread out of KVM_RUN (used to pause
    /// them; see [`super::pause`]).
    pub(crate) fn kick_vcpus(&self) {
        let g = lock(&self.inner);
        for &t in &g.vcpu_threads {
            super::vcpu::kick(t);
        }
    }

    /// Registers a running vCPU thread so that [`finish`](Self::finish) can
    /// kick it. Threads must be registered before they are joined, and only
    /// joined after `finish` was called.
    pub(crate) fn register_vcpu_thread(&self, t: libc::pthread_t) {
        let mut g = lock(&self.inner);
        g.vcpu_threads.push(t);
        if g.outcome.is_some() {
            super::vcpu::kick(t);
        }
    }

    /// The outcome, if the VM ended.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        lock(&self.inner).outcome.clone()
    }

    /// Waits for the outcome, at most `timeout` if given.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = lock(&self.inner);
        loop {
            if let Some(o) = &g.outcome {
                return Some(o.clone());
            }
            g = match deadline {
                None => self
                    .cv
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins_and_wakes_waiters() {
        let s = Arc::new(ExitState::new());
        assert!(s.wait(Some(Duration::from_millis(1))).is_none());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait(None));
        s.finish(Outcome::Exit(ExitReason::PowerOff));
        s.finish(Outcome::Exit(ExitReason::Reset));
        assert!(s.should_stop());
        assert!(matches!(
            t.join().unwrap(),
            Some(Outcome::Exit(ExitReason::PowerOff))
        ));
        assert!(matches!(
            s.outcome(),
            Some(Outcome::Exit(ExitReason::PowerOff))
        ));
    }
}
