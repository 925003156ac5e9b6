//! A simple warm pool: per session configuration, up to `pool_size`
//! sessions booted ahead. `pool_acquire` hands one out (or boots one when
//! none is warm) and starts a replacement in the background; `pool_release`
//! removes the session (a used VM is never handed out again).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::create_session;
use super::proto::CreateSpec;
use super::server::Daemon;
use crate::error::SessionError;
use crate::SessionState;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Warm session names by configuration (its JSON, names left out).
    warm: Mutex<HashMap<String, Vec<String>>>,
    /// Sessions handed out and not released yet.
    acquired: Mutex<BTreeSet<String>>,
    /// Warm sessions booting, by configuration.
    booting: Mutex<HashMap<String, usize>>,
}

/// How long an acquire waits for a warm session that is booting.
const BOOTING_WAIT: Duration = Duration::from_secs(120);

impl Pool {
    /// The warm sessions (not handed out).
    pub(crate) fn warm_names(&self) -> Vec<String> {
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Every session the pool holds warm or handed out.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut all = self.warm_names();
        all.extend(
            self.acquired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        all
    }

    /// Forgets an acquired session (it was removed).
    pub(crate) fn forget(&self, name: &str) {
        self.acquired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Every session the pool holds or handed out, which it forgets (at
    /// daemon shutdown).
    pub(crate) fn drain(&self) -> Vec<String> {
        let all = self.names();
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.acquired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        all
    }
}

fn key(spec: &CreateSpec) -> String {
    let mut s = spec.clone();
    s.name = None;
    s.keep = true;
    serde_json::to_string(&s).unwrap_or_default()
}

fn pooled_spec(spec: &CreateSpec) -> CreateSpec {
    let mut s = spec.clone();
    s.name = None;
    s
}

/// Boots warm sessions for `spec` until the pool holds `pool_size`.
fn refill(d: &Arc<Daemon>, spec: &CreateSpec) {
    let d = d.clone();
    let spec = pooled_spec(spec);
    let _ = std::thread::Builder::new()
        .name("nook-serve-pool".into())
        .spawn(move || loop {
            let k = key(&spec);
            let have = d
                .pool
                .warm
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&k)
                .map_or(0, Vec::len);
            if have >= d.cfg.pool_size || d.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let name = d.new_name("p");
            *d.pool
                .booting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(k.clone())
                .or_default() += 1;
            let created = create_session(&d, &spec, Some(name.clone()));
            let mut warm = d.pool.warm.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = d
                .pool
                .booting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&k)
            {
                *n = n.saturating_sub(1);
            }
            match created {
                Ok(_) => warm.entry(k).or_default().push(name),
                Err(e) => {
                    tracing::warn!("nook serve: the pool cannot boot a session: {e}");
                    return;
                }
            }
        });
}

/// A warm session of configuration `spec`, or a new one.
pub(crate) fn acquire(d: &Arc<Daemon>, spec: &CreateSpec) -> Result<SessionState, SessionError> {
    let k = key(spec);
    let deadline = Instant::now() + BOOTING_WAIT;
    // A warm session, or one about to be: wait for a boot in flight.
    let warm = loop {
        let mut warm = d.pool.warm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = warm.get_mut(&k).and_then(Vec::pop) {
            break Some(name);
        }
        let booting = d
            .pool
            .booting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .copied()
            .unwrap_or(0);
        drop(warm);
        if booting == 0 || Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let st = match warm {
        Some(name) => {
            let st = crate::state::SessionDir::new(&d.cfg.home, &name)?.read_state()?;
            if st.state == crate::SessionPhase::Running {
                st
            } else {
                d.destroy(&name);
                create_session(d, &pooled_spec(spec), Some(d.new_name("p")))?
            }
        }
        None => create_session(d, &pooled_spec(spec), Some(d.new_name("p")))?,
    };
    d.pool
        .acquired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(st.name.clone());
    refill(d, spec);
    Ok(st)
}

/// Removes acquired session `name`; false when the pool did not hand it out.
pub(crate) fn release(d: &Daemon, name: &str) -> bool {
    let was = d
        .pool
        .acquired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    if was {
        d.destroy(name);
    }
    was
}
