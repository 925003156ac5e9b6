//! Warm pools: VMs restored from one snapshot, kept idle and handed out.
//!
//! A filler thread (`nook-pool`) keeps at least `min` idle VMs restored and
//! never more than `max` alive. [`Pool::acquire`] takes an idle one at once
//! (or restores one itself while under `max`, or waits up to its timeout).
//! Dropping the [`PooledVm`] returns it: by default the VM is discarded and
//! a fresh clone restored in the background (every user sees the
//! snapshot's state); with `reuse` it goes back to the idle list as it is.
//! Idle VMs above `min` are reaped after `idle_timeout`.
//!
//! On the kvm engine the pool restores through a [`nook_vmm::KvmRestorer`]:
//! the filler keeps one KVM VM made ahead of time (memory slots, irqchip,
//! PIT, vCPUs, threads), so a refill only loads state, and a discarded
//! clone hands its KVM VM back for the next restore instead of closing it
//! (closing one waits for the kernel's grace periods, 15-25 ms here).

use std::collections::VecDeque;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::VmConfig;
use crate::engine::EngineId;
use crate::error::VmError;
use crate::snapshot::ENGINE_DIR;
use crate::vm::Vm;

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The snapshot every VM is restored from.
    pub snapshot: PathBuf,
    /// Idle VMs kept ready.
    pub min: usize,
    /// VMs alive at most (idle + in use + being restored).
    pub max: usize,
    /// Idle VMs beyond `min` are stopped after this long.
    pub idle_timeout: Duration,
    /// Return released VMs to the pool as they are instead of replacing
    /// them with fresh clones.
    pub reuse: bool,
    /// Library settings for the restored VMs (home, cancel flag, ...).
    pub vm: VmConfig,
}

impl PoolConfig {
    pub fn new(snapshot: impl Into<PathBuf>) -> PoolConfig {
        PoolConfig {
            snapshot: snapshot.into(),
            min: 1,
            max: 4,
            idle_timeout: Duration::from_secs(60),
            reuse: false,
            vm: VmConfig::default(),
        }
    }
}

/// Why a pool could not hand out a VM.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid pool configuration: {0}")]
    Config(&'static str),
    #[error("no VM became free within {0:?}: raise max or the timeout")]
    Timeout(Duration),
    #[error("cannot restore a pool VM")]
    Restore(#[source] VmError),
    #[error("cannot start the pool's filler thread")]
    Thread(#[source] std::io::Error),
}

/// A consistent view of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// VMs that exist or are being restored: idle + in use + restoring.
    pub alive: usize,
    pub idle: usize,
    pub in_use: usize,
    /// Callers blocked in `acquire`.
    pub waiting: usize,
    /// VMs restored over the pool's life.
    pub restored: u64,
    /// kvm engine: KVM VMs ready for the next restore (made ahead, or
    /// handed back by discarded clones).
    pub kvm_ready: usize,
    /// kvm engine: KVM VMs of discarded clones kept for reuse, over the
    /// pool's life.
    pub kvm_reused: u64,
}

#[derive(Debug, Default)]
struct State {
    idle: VecDeque<(Vm, Instant)>,
    in_use: usize,
    restoring: usize,
    waiting: usize,
    restored: u64,
    closing: bool,
    last_error: Option<String>,
}

impl State {
    fn alive(&self) -> usize {
        self.idle.len() + self.in_use + self.restoring
    }
}

#[derive(Debug)]
struct Inner {
    cfg: PoolConfig,
    state: Mutex<State>,
    changed: Condvar,
    /// The snapshot's restorer, on the kvm engine.
    kvm: Option<nook_vmm::KvmRestorer>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn restore(&self) -> Result<Vm, VmError> {
        Vm::restore_with(&self.cfg.snapshot, &self.cfg.vm, self.kvm.as_ref())
    }

    /// kvm engine: no KVM VM is ready for the next restore.
    fn kvm_wanted(&self) -> bool {
        self.kvm.as_ref().is_some_and(|r| r.stats().ready == 0)
    }
}

/// A pool of VMs restored from one snapshot.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<Inner>,
    filler: Option<JoinHandle<()>>,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Result<Pool, PoolError> {
        if cfg.max == 0 || cfg.min > cfg.max {
            return Err(PoolError::Config("need 0 <= min <= max and max >= 1"));
        }
        let snap = crate::snapshot::Snapshot::open(&cfg.snapshot).map_err(PoolError::Restore)?;
        let kvm = match snap.manifest.engine {
            EngineId::Kvm => {
                let dir = cfg.snapshot.join(ENGINE_DIR);
                let r = crate::engine::kvm::open_restorer(&dir).map_err(PoolError::Restore)?;
                r.keep(cfg.max);
                Some(r)
            }
            EngineId::QemuKvm | EngineId::QemuTcg => None,
        };
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            kvm,
        });
        let i = inner.clone();
        let filler = std::thread::Builder::new()
            .name("nook-pool".into())
            .spawn(move || {
                // Woken by every hand-out: it must not take the caller's
                // core before `acquire` returns.
                if let Err(e) = nook_vmm::vstate::worker::batch_scheduling() {
                    tracing::debug!("nook-pool: filler keeps normal scheduling: {e}");
                }
                fill(&i)
            })
            .map_err(PoolError::Thread)?;
        Ok(Pool {
            inner,
            filler: Some(filler),
        })
    }

    /// Hands out a VM, waiting up to `timeout` when `max` are in use.
    pub fn acquire(&self, timeout: Duration) -> Result<PooledVm, PoolError> {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let mut st = inner.lock();
        loop {
            if let Some((vm, _)) = st.idle.pop_front() {
                st.in_use += 1;
                inner.changed.notify_all();
                return Ok(PooledVm {
                    vm: Some(vm),
                    pool: inner.clone(),
                });
            }
            if st.alive() < inner.cfg.max {
                // Restore one ourselves rather than wait for the filler.
                st.restoring += 1;
                drop(st);
                let r = inner.restore();
                st = inner.lock();
                st.restoring -= 1;
                match r {
                    Ok(vm) => {
                        st.restored += 1;
                        st.in_use += 1;
                        inner.changed.notify_all();
                        return Ok(PooledVm {
                            vm: Some(vm),
                            pool: inner.clone(),
                        });
                    }
                    Err(e) => {
                        inner.changed.notify_all();
                        return Err(PoolError::Restore(e));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PoolError::Timeout(timeout));
            }
            st.waiting += 1;
            st = inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiting -= 1;
        }
    }

    pub fn stats(&self) -> PoolStats {
        let kvm = self
            .inner
            .kvm
            .as_ref()
            .map(|r| r.stats())
            .unwrap_or_default();
        let st = self.inner.lock();
        PoolStats {
            alive: st.alive(),
            idle: st.idle.len(),
            in_use: st.in_use,
            waiting: st.waiting,
            restored: st.restored,
            kvm_ready: kvm.ready,
            kvm_reused: kvm.reused,
        }
    }

    /// The last error the filler met restoring a VM, if any.
    pub fn last_error(&self) -> Option<String> {
        self.inner.lock().last_error.clone()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle: Vec<(Vm, Instant)> = {
            let mut st = self.inner.lock();
            st.closing = true;
            self.inner.changed.notify_all();
            st.idle.drain(..).collect()
        };
        drop(idle);
        if let Some(f) = self.filler.take() {
            let _ = f.join();
        }
        // A VM the filler restored while closing is dropped by it.
        let rest: Vec<(Vm, Instant)> = self.inner.lock().idle.drain(..).collect();
        drop(rest);
    }
}

/// The filler: keeps `min` idle, reaps idle VMs beyond `min` after the
/// timeout, backs off after a failed restore.
fn fill(inner: &Inner) {
    let cfg = &inner.cfg;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut st = inner.lock();
        if st.closing {
            return;
        }
        // Reap idle VMs beyond min that sat too long (oldest are at the back).
        let mut reaped = Vec::new();
        while st.idle.len() > cfg.min {
            match st.idle.back() {
                Some((_, since)) if since.elapsed() >= cfg.idle_timeout => {
                    if let Some(v) = st.idle.pop_back() {
                        reaped.push(v);
                    }
                }
                _ => break,
            }
        }
        let want =
            st.idle.len() + st.restoring < cfg.min + st.waiting.min(1) && st.alive() < cfg.max;
        if !reaped.is_empty() {
            inner.changed.notify_all();
        }
        if want {
            st.restoring += 1;
            drop(st);
            drop(reaped);
            let r = inner.restore();
            let mut st = inner.lock();
            st.restoring -= 1;
            match r {
                Ok(vm) => {
                    st.restored += 1;
                    st.last_error = None;
                    backoff = Duration::from_millis(100);
                    if st.closing {
                        drop(st);
                        drop(vm);
                        return;
                    }
                    st.idle.push_front((vm, Instant::now()));
                }
                Err(e) => {
                    st.last_error = Some(e.to_string());
                    tracing::warn!("nook-pool: restore failed: {e}");
                    drop(st);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            inner.changed.notify_all();
            continue;
        }
        if let (true, Some(r)) = (inner.kvm_wanted(), &inner.kvm) {
            drop(st);
            drop(reaped);
            if let Err(e) = r.prepare(1) {
                tracing::warn!("nook-pool: cannot make a kvm vm ahead: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            continue;
        }
        let tick = cfg.idle_timeout.min(Duration::from_millis(500));
        drop(reaped);
        let _unused = inner.changed.wait_timeout(st, tick);
    }
}

/// A VM on loan from a pool; dropping it gives it back.
#[derive(Debug)]
pub struct PooledVm {
    vm: Option<Vm>,
    pool: Arc<Inner>,
}

impl Deref for PooledVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        // Present from creation until drop.
        self.vm
            .as_ref()
            .unwrap_or_else(|| unreachable!("a PooledVm always holds its VM until dropped"))
    }
}

impl Drop for PooledVm {
    fn drop(&mut self) {
        let Some(vm) = self.vm.take() else { return };
        let mut st = self.pool.lock();
        st.in_use -= 1;
        if self.pool.cfg.reuse && !st.closing {
            st.idle.push_front((vm, Instant::now()));
            self.pool.changed.notify_all();
            return;
        }
        self.pool.changed.notify_all();
        drop(st);
        // Restore-on-release: this VM is spent; the filler makes a new one.
        drop(vm);
    }
}
