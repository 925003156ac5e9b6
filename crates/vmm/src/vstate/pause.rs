//! Pausing every vCPU at a consistent point and collecting its state.
//!
//! Protocol between [`crate::KvmVm::snapshot`] (the controller) and the
//! `nook-vcpu{N}` threads:
//! 1. the controller sets the request flag and kicks every vCPU thread out
//!    of `KVM_RUN` (see [`super::vcpu`]);
//! 2. each thread, at the top of its run loop, completes any pending I/O
//!    exit (one `KVM_RUN` with `immediate_exit` set runs no guest code),
//!    then parks;
//! 3. once all are parked the controller asks for their state; each thread
//!    reads its own vCPU ([`VcpuState::save`]) and hands it over;
//! 4. [`PauseControl::resume`] lets them run again; a VM that is stopping
//!    meanwhile lets them leave instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use super::exit::ExitState;
use super::vcpu_state::{VcpuState, VcpuStateError};
use crate::devices::lock;

/// How often parked threads look at the stop flag.
const PARK_POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Inner {
    /// A pause is in progress.
    paused: bool,
    /// Threads currently parked.
    parked: usize,
    /// MSRs to read; `Some` once every vCPU is parked.
    capture: Option<Arc<Vec<u32>>>,
    /// One slot per vCPU, filled by its thread.
    states: Vec<Option<Result<VcpuState, VcpuStateError>>>,
}

/// Shared between a VM's vCPU threads and its handle.
#[derive(Default)]
pub(crate) struct PauseControl {
    requested: AtomicBool,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl std::fmt::Debug for PauseControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseControl")
            .field("requested", &self.requested())
            .finish()
    }
}

/// Why the vCPUs could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The VM ended (or was ending) before every vCPU parked.
    #[error("the vm is not running")]
    NotRunning,
    /// A vCPU did not park in time.
    #[error("vcpus did not pause within {0:?}")]
    Timeout(Duration),
    /// Reading a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
}

impl PauseControl {
    /// Whether the vCPU run loops must park.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// vCPU thread side: completes pending I/O, parks, saves its state
    /// when asked, and returns when the pause ends or the VM stops.
    pub(crate) fn park(&self, index: u8, fd: &mut VcpuFd, exit: &ExitState) {
        // Finish the last exit (an I/O read's data lands in the registers
        // only on the next KVM_RUN); immediate_exit keeps the guest out.
        fd.set_kvm_immediate_exit(1);
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        let mut g = lock(&self.inner);
        if !g.paused {
            return;
        }
        g.parked += 1;
        self.cv.notify_all();
        loop {
            let slot = usize::from(index);
            if let Some(msrs) = g.capture.clone() {
                if g.states.get(slot).is_some_and(Option::is_none) {
                    drop(g);
                    let state = VcpuState::save(fd, index, &msrs);
                    g = lock(&self.inner);
                    if let Some(s) = g.states.get_mut(slot) {
                        *s = Some(state);
                    }
                    self.cv.notify_all();
                }
            }
            if !g.paused || exit.should_stop() {
                break;
            }
            g = self
                .cv
                .wait_timeout(g, PARK_POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        g.parked -= 1;
        self.cv.notify_all();
    }

    /// Controller side: parks all `vcpus` threads and returns their
    /// states. On error the vCPUs are resumed.
    pub(crate) fn pause(
        &self,
        exit: &ExitState,
        vcpus: usize,
        msrs: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, PauseError> {
        {
            let mut g = lock(&self.inner);
            g.paused = true;
            g.capture = None;
            g.states = (0..vcpus).map(|_| None).collect();
        }
        self.requested.store(true, Ordering::SeqCst);
        exit.kick_vcpus();
        let result = self.collect(exit, vcpus, msrs, Instant::now() + timeout, timeout);
        if result.is_err() {
            self.resume();
        }
        result
    }

    fn collect(
        &self,
        exit: &ExitState,
        vcpus: usize,
        msrs: Vec<u32>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, PauseError> {
        let mut g = lock(&self.inner);
        let mut msrs = Some(Arc::new(msrs));
        loop {
            if exit.should_stop() {
                return Err(PauseError::NotRunning);
            }
            if g.parked == vcpus {
                if let Some(m) = msrs.take() {
                    g.capture = Some(m);
                    self.cv.notify_all();
                }
                if g.states.iter().all(Option::is_some) {
                    let mut out = Vec::with_capacity(vcpus);
                    for s in g.states.drain(..).flatten() {
                        out.push(s?);
                    }
                    return Ok(out);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout(timeout));
            }
            g = self
                .cv
                .wait_timeout(g, (deadline - now).min(PARK_POLL))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Lets parked vCPUs run again.
    pub(crate) fn resume(&self) {
        self.requested.store(false, Ordering::SeqCst);
        let mut g = lock(&self.inner);
        g.paused = false;
        g.capture = None;
        g.states.clear();
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_of_a_stopped_vm_fails_and_resumes() {
        let exit = ExitState::new();
        exit.finish(super::super::exit::Outcome::Exit(
            crate::ExitReason::Stopped,
        ));
        let p = PauseControl::default();
        let e = p.pause(&exit, 1, vec![], Duration::from_millis(10));
        assert!(matches!(e, Err(PauseError::NotRunning)), "{e:?}");
        assert!(!p.requested());
    }

    #[test]
    fn pause_times_out_when_a_vcpu_never_parks() {
        let exit = ExitState::new();
        let p = PauseControl::default();
        let e = p.pause(&exit, 1, vec![], Duration::from_millis(20));
        assert!(matches!(e, Err(PauseError::Timeout(_))), "{e:?}");
        assert!(!p.requested());
    }
}
