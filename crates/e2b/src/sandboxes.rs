//! The sandboxes this server runs: one nook session each (named
//! `e2b-ID`), with what E2B keeps beside it (template, metadata, envVars,
//! access token, end of life) and the envd processes started in it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nook_serve::{SessionClient, SessionError, SessionSpec};

use crate::config::E2bConfig;
use crate::error::E2bError;
use crate::process::ProcTable;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxPhase {
    Running,
    /// Snapshotted and stopped; `connect` restores it.
    Paused,
}

impl SandboxPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxPhase::Running => "running",
            SandboxPhase::Paused => "paused",
        }
    }
}

/// What can change over a sandbox's life.
#[derive(Debug)]
pub struct SandboxLife {
    pub phase: SandboxPhase,
    /// Seconds since the Unix epoch when it is killed (while running).
    pub end_unix: i64,
    /// Its session's current name (a resume starts a new session).
    pub session: String,
}

/// One sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    /// The templateID it was created from.
    pub template: String,
    /// The nook image behind the template.
    pub image: String,
    pub access_token: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub started_unix: i64,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub life: Mutex<SandboxLife>,
    /// Held while it pauses or resumes (`life` is only held briefly).
    pub transition: Mutex<()>,
    pub procs: ProcTable,
    pub watchers: crate::watch::Watchers,
}

impl Sandbox {
    /// A client of its running session.
    pub fn client(&self, home: &std::path::Path) -> Result<SessionClient, SessionError> {
        let name = self.life().session.clone();
        SessionClient::open(home, &name)
    }

    fn phase_and_session(&self) -> (SandboxPhase, String) {
        let l = self.life();
        (l.phase, l.session.clone())
    }

    pub fn life(&self) -> std::sync::MutexGuard<'_, SandboxLife> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory its pause snapshot lives in.
    pub fn snapshot_dir(&self, cfg: &E2bConfig) -> PathBuf {
        cfg.home.join("e2b").join("paused").join(&self.id)
    }
}

/// What a create asks for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub template: String,
    pub timeout_s: u64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
}

/// All sandboxes, by id.
#[derive(Debug, Default)]
pub struct Sandboxes {
    map: Mutex<HashMap<String, Arc<Sandbox>>>,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    nook_serve::now_unix() as i64
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sandboxes {
    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.lock().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (a.started_unix, &a.id).cmp(&(b.started_unix, &b.id)));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a sandbox from `req.template` (blocking: boots or restores its VM).
    pub fn create(&self, cfg: &E2bConfig, req: CreateRequest) -> Result<Arc<Sandbox>, E2bError> {
        let image = cfg.template_image(&req.template)?;
        let id = format!("i{}", random_hex(10));
        let session = format!("e2b-{id}");
        nook_serve::start(&cfg.home, &session_spec(cfg, &session, &image), &cfg.exe).map_err(
            |source| E2bError::Session {
                op: "start",
                id: id.clone(),
                source,
            },
        )?;
        let now = now();
        let sb = Arc::new(Sandbox {
            id: id.clone(),
            template: req.template,
            image,
            access_token: random_hex(16),
            metadata: req.metadata,
            env_vars: req.env_vars,
            started_unix: now,
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            life: Mutex::new(SandboxLife {
                phase: SandboxPhase::Running,
                end_unix: now + req.timeout_s as i64,
                session,
            }),
            transition: Mutex::new(()),
            procs: ProcTable::default(),
            watchers: Default::default(),
        });
        self.lock().insert(id, sb.clone());
        Ok(sb)
    }

    /// Kills sandbox `id` (blocking): its VM and its paused snapshot go.
    pub fn kill(&self, cfg: &E2bConfig, id: &str) -> Result<(), E2bError> {
        let sb = self
            .lock()
            .remove(id)
            .ok_or_else(|| E2bError::NoSandbox(id.to_string()))?;
        sb.procs.clear();
        sb.watchers.clear();
        let session = sb.life().session.clone();
        remove_session(cfg, &session);
        let _ = std::fs::remove_dir_all(sb.snapshot_dir(cfg));
        Ok(())
    }

    /// Pauses sandbox `id`: snapshots its VM (memory, running processes)
    /// and stops it. Its envd process handles end (the processes do not).
    pub fn pause(&self, cfg: &E2bConfig, id: &str) -> Result<(), E2bError> {
        let sb = self
            .get(id)
            .ok_or_else(|| E2bError::NoSandbox(id.to_string()))?;
        let _op = sb.transition.lock().unwrap_or_else(|p| p.into_inner());
        let (phase, session) = sb.phase_and_session();
        if phase == SandboxPhase::Paused {
            return Err(E2bError::AlreadyPaused(id.to_string()));
        }
        let dir = sb.snapshot_dir(cfg);
        let io = |op| {
            let path = dir.clone();
            move |source| E2bError::Io { op, path, source }
        };
        // A snapshot of an earlier pause: its VM has been resumed from it.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("remove"))?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io("create"))?;
        }
        let session_err = |source| E2bError::Session {
            op: "pause",
            id: id.to_string(),
            source,
        };
        SessionClient::open(&cfg.home, &session)
            .and_then(|c| c.snapshot_running(&dir))
            .map_err(session_err)?;
        sb.life().phase = SandboxPhase::Paused;
        remove_session(cfg, &session);
        sb.procs.clear();
        sb.watchers.clear();
        Ok(())
    }

    /// Resumes paused sandbox `id` from its snapshot, in a new session.
    pub fn resume(&self, cfg: &E2bConfig, id: &str) -> Result<(), E2bError> {
        let sb = self
            .get(id)
            .ok_or_else(|| E2bError::NoSandbox(id.to_string()))?;
        let _op = sb.transition.lock().unwrap_or_else(|p| p.into_inner());
        let (phase, session) = sb.phase_and_session();
        if phase != SandboxPhase::Paused {
            return Ok(());
        }
        let mut spec = session_spec(cfg, &session, &sb.image);
        spec.snapshot = Some(sb.snapshot_dir(cfg));
        spec.template = false;
        nook_serve::start(&cfg.home, &spec, &cfg.exe).map_err(|source| E2bError::Session {
            op: "resume",
            id: id.to_string(),
            source,
        })?;
        sb.life().phase = SandboxPhase::Running;
        Ok(())
    }

    /// Running sandboxes whose time is up.
    pub fn expired(&self, now: i64) -> Vec<String> {
        self.lock()
            .values()
            .filter(|s| {
                let l = s.life();
                l.phase == SandboxPhase::Running && l.end_unix <= now
            })
            .map(|s| s.id.clone())
            .collect()
    }
}

/// Removes a session, stopping it when it runs.
pub fn remove_session(cfg: &E2bConfig, session: &str) {
    match nook_serve::remove(&cfg.home, session, true) {
        Ok(()) | Err(SessionError::NoSuchSession(_)) => {}
        Err(e) => tracing::warn!("e2b: cannot remove session {session}: {e}"),
    }
}

/// The session a sandbox of `image` runs as.
pub fn session_spec(cfg: &E2bConfig, name: &str, image: &str) -> SessionSpec {
    SessionSpec {
        image: Some(image.to_string()),
        kernel: cfg.kernel.clone(),
        agent: cfg.agent.clone(),
        ..SessionSpec::new(
            name,
            cfg.engine.clone(),
            cfg.memory_mib,
            cfg.vcpus,
            cfg.boot_timeout_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_are_random_hex() {
        let a = random_hex(10);
        let b = random_hex(10);
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
