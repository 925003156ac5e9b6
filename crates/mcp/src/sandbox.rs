//! Sandboxes are nook sessions ([`nook_serve`]): one session host process
//! and VM each, named `mcp-PID-N`. The server remembers the ones its
//! client created and destroys them when the client goes away; idle ones
//! stop by themselves (the session's idle timeout).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nook_serve::{SessionClient, SessionError, SessionPhase, SessionSpec, SpecMount};

use crate::config::McpConfig;
use crate::error::ToolError;
use crate::types::{SandboxCreateArgs, SandboxCreated, SandboxInfo, SandboxList, ShareArg};

/// How long a disconnect waits for sandboxes still booting before it
/// destroys them.
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// What starting a sandbox gave: at least the session's state.
pub trait Started {
    fn session(&self) -> &nook_serve::SessionState;
}

impl Started for nook_serve::SessionState {
    fn session(&self) -> &nook_serve::SessionState {
        self
    }
}

impl Started for (nook_serve::SessionState, nook_serve::desktop::DesktopState) {
    fn session(&self) -> &nook_serve::SessionState {
        &self.0
    }
}

/// The sandboxes this server's client created.
#[derive(Debug)]
pub struct Sandboxes {
    home: PathBuf,
    owned: Mutex<BTreeSet<String>>,
    creating: AtomicUsize,
    closing: AtomicBool,
    seq: AtomicU32,
}

impl Sandboxes {
    /// Sandboxes under `$NOOK_HOME` `home`.
    pub fn new(home: &Path) -> Sandboxes {
        Sandboxes {
            home: home.to_path_buf(),
            owned: Mutex::new(BTreeSet::new()),
            creating: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            seq: AtomicU32::new(1),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this client created sandbox `id`.
    pub fn is_owned(&self, id: &str) -> bool {
        self.owned().contains(id)
    }

    /// A connection to running sandbox `id` (any running session, not only
    /// this client's: a user may hand one to the agent by name).
    pub fn client(&self, op: &'static str, id: &str) -> Result<SessionClient, ToolError> {
        SessionClient::open(&self.home, id).map_err(|e| ToolError::session(op, id, e))
    }

    /// Boots a new sandbox and waits until it serves.
    pub fn create(
        &self,
        cfg: &McpConfig,
        args: SandboxCreateArgs,
    ) -> Result<SandboxCreated, ToolError> {
        self.create_with(cfg, args, |spec| {
            nook_serve::start(&self.home, spec, &cfg.exe)
        })
        .map(|(created, _)| created)
    }

    /// Boots a new sandbox with `start` (which starts a session of the
    /// spec it is given and may do more, such as starting a display), and
    /// waits until it serves; also gives what `start` returned.
    pub fn create_with<T, S>(
        &self,
        cfg: &McpConfig,
        args: SandboxCreateArgs,
        start: S,
    ) -> Result<(SandboxCreated, T), ToolError>
    where
        S: Fn(&SessionSpec) -> Result<T, SessionError>,
        T: Started,
    {
        let mut spec = sandbox_spec(cfg, &args)?;
        if let Some(reference) = &args.image {
            crate::exec::resolve_image(&self.home, reference)?;
        }
        self.creating.fetch_add(1, Ordering::SeqCst);
        let started = self.start_named(&mut spec, start);
        self.creating.fetch_sub(1, Ordering::SeqCst);
        let started = started?;
        Ok((
            SandboxCreated {
                sandbox_id: spec.name,
                engine: started.session().engine.clone(),
                memory_mib: spec.memory_mib,
                cpus: spec.vcpus,
                idle_timeout_s: spec.idle_timeout_s.unwrap_or_default(),
            },
            started,
        ))
    }

    /// Starts `spec` with `start` under the next free name (which it records).
    fn start_named<T>(
        &self,
        spec: &mut SessionSpec,
        start: impl Fn(&SessionSpec) -> Result<T, SessionError>,
    ) -> Result<T, ToolError> {
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return Err(ToolError::Ended("the MCP server is shutting down".into()));
            }
            spec.name = format!(
                "mcp-{}-{}",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::SeqCst)
            );
            self.owned().insert(spec.name.clone());
            match start(spec) {
                Ok(started) => return Ok(started),
                // Left behind by an earlier server with this pid: next name.
                Err(SessionError::Exists(_)) => {
                    self.owned().remove(&spec.name);
                }
                Err(e) => {
                    let _ = nook_serve::remove(&self.home, &spec.name, true);
                    self.owned().remove(&spec.name);
                    return Err(ToolError::Create(Box::new(e)));
                }
            }
        }
    }

    /// Stops and removes sandbox `id`, which this client created.
    pub fn destroy(&self, id: &str) -> Result<(), ToolError> {
        if !self.is_owned(id) {
            return Err(match SessionClient::open(&self.home, id) {
                Ok(_) => ToolError::NotOwned(id.to_string()),
                Err(e) => ToolError::session("sandbox_destroy", id, e),
            });
        }
        let removed = nook_serve::remove(&self.home, id, true);
        self.owned().remove(id);
        match removed {
            Ok(()) | Err(SessionError::NoSuchSession(_)) => Ok(()),
            Err(e) => Err(ToolError::session("sandbox_destroy", id, e)),
        }
    }

    /// Destroys every sandbox this client created (it disconnected), once
    /// the ones still booting are up; no new ones start after this.
    pub fn destroy_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + CREATE_WAIT;
        while self.creating.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let names: Vec<String> = std::mem::take(&mut *self.owned()).into_iter().collect();
        std::thread::scope(|s| {
            for name in &names {
                s.spawn(move || {
                    tracing::info!("nook mcp: destroying sandbox {name}");
                    if let Err(e) = nook_serve::remove(&self.home, name, true) {
                        tracing::warn!("nook mcp: sandbox {name}: {}", nook::error_chain(&e));
                    }
                });
            }
        });
    }

    /// The sandboxes that are starting or running.
    pub fn list(&self) -> Result<SandboxList, ToolError> {
        let all = nook_serve::list_sessions(&self.home).map_err(|e| ToolError::Session {
            op: "sandbox_list",
            sandbox: String::new(),
            source: Box::new(e),
        })?;
        let sandboxes = all
            .into_iter()
            .filter(|s| s.state != SessionPhase::Exited)
            .map(|s| SandboxInfo {
                owned: self.is_owned(&s.name),
                state: match s.state {
                    SessionPhase::Starting => "starting",
                    _ => "running",
                }
                .to_string(),
                sandbox_id: s.name,
                engine: s.engine,
                image: s.image,
                memory_mib: s.memory_mib,
                cpus: s.vcpus,
                created_unix: s.created_unix,
            })
            .collect();
        Ok(SandboxList { sandboxes })
    }
}

/// The session a `sandbox_create` asks for (its name is set when started).
fn sandbox_spec(cfg: &McpConfig, args: &SandboxCreateArgs) -> Result<SessionSpec, ToolError> {
    let memory_mib = args.memory_mib.unwrap_or(cfg.vm.memory_mib);
    nook::check_memory(memory_mib).map_err(|e| ToolError::Argument {
        field: "memory_mib",
        reason: e.to_string(),
    })?;
    let vcpus = args.cpus.unwrap_or(cfg.vm.vcpus);
    nook::check_vcpus(vcpus, cfg.vm.engine).map_err(|e| ToolError::Argument {
        field: "cpus",
        reason: e.to_string(),
    })?;
    let idle = args.idle_timeout_s.unwrap_or(cfg.idle_timeout_s);
    if idle == 0 {
        return Err(ToolError::Argument {
            field: "idle_timeout_s",
            reason: "give a number of seconds from 1".into(),
        });
    }
    let mut shares: Vec<SpecMount> = cfg.vm.shares.iter().map(SpecMount::from).collect();
    for s in args.share.iter().flatten() {
        shares.push(check_share(s, &cfg.allow_share)?);
    }
    Ok(SessionSpec {
        name: String::new(),
        image: args.image.clone(),
        engine: cfg.vm.engine.name().to_string(),
        memory_mib,
        vcpus,
        kernel: cfg.vm.kernel.clone(),
        agent: cfg.vm.agent.clone(),
        boot_timeout_s: cfg.vm.boot_timeout.as_secs(),
        template: cfg.vm.template,
        idle_timeout_s: Some(idle),
        max_duration_s: None,
        net: cfg.vm.net.clone(),
        env: Vec::new(),
        shares,
        volumes: Vec::new(),
        snapshot: None,
        balloon: cfg.vm.balloon,
    })
}

/// A share an agent asks for: an existing host directory under one of the
/// directories the user allowed (after resolving symlinks and `..`).
pub fn check_share(s: &ShareArg, allowed: &[PathBuf]) -> Result<SpecMount, ToolError> {
    if allowed.is_empty() {
        return Err(ToolError::SharesDisabled);
    }
    crate::types::check_guest_path("share.guest_path", &s.guest_path)?;
    let bad = |reason: String| ToolError::Argument {
        field: "share.host_dir",
        reason,
    };
    let host = Path::new(&s.host_dir);
    if !host.is_absolute() {
        return Err(bad(format!(
            "`{}` is not an absolute host path",
            s.host_dir
        )));
    }
    let real = host
        .canonicalize()
        .map_err(|e| bad(format!("`{}`: {e}", s.host_dir)))?;
    if !real.is_dir() {
        return Err(bad(format!("`{}` is not a directory", s.host_dir)));
    }
    let inside = allowed.iter().any(|root| {
        root.canonicalize()
            .map(|root| real.starts_with(root))
            .unwrap_or(false)
    });
    if !inside {
        return Err(bad(format!(
            "`{}` is not under a directory the user allowed (nook mcp --allow-share): {}",
            s.host_dir,
            allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(SpecMount {
        host_path: real,
        guest_path: s.guest_path.clone(),
        read_only: s.read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> McpConfig {
        McpConfig::new(PathBuf::from("/bin/false"))
    }

    fn args(v: serde_json::Value) -> SandboxCreateArgs {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn create_arguments_are_checked_before_anything_starts() {
        let c = cfg();
        for (v, field) in [
            (serde_json::json!({"memory_mib": 1}), "memory_mib"),
            (serde_json::json!({"cpus": 0}), "cpus"),
            (serde_json::json!({"idle_timeout_s": 0}), "idle_timeout_s"),
        ] {
            let e = sandbox_spec(&c, &args(v.clone())).unwrap_err();
            assert!(e.message().contains(field), "{v}: {}", e.message());
        }
        let spec = sandbox_spec(&c, &args(serde_json::json!({"memory_mib": 512}))).unwrap();
        assert_eq!(spec.memory_mib, 512);
        assert_eq!(spec.idle_timeout_s, Some(crate::DEFAULT_IDLE_TIMEOUT_S));
        assert_eq!(spec.engine, "auto");
    }

    #[test]
    fn shares_need_the_users_permission_and_stay_under_it() {
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path().to_path_buf();
        let inner = root.join("proj");
        std::fs::create_dir_all(&inner).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = other_dir.path().to_path_buf();
        let share = |host: &Path| ShareArg {
            host_dir: host.display().to_string(),
            guest_path: "/work".into(),
            read_only: false,
        };
        assert!(matches!(
            check_share(&share(&inner), &[]),
            Err(ToolError::SharesDisabled)
        ));
        let ok = check_share(&share(&inner), std::slice::from_ref(&root)).unwrap();
        assert_eq!(ok.host_path, inner.canonicalize().unwrap());
        let escape = root.join("proj/../../");
        for bad in [other.clone(), escape, PathBuf::from("relative")] {
            let e = check_share(&share(&bad), std::slice::from_ref(&root)).unwrap_err();
            assert!(e.message().contains("share.host_dir"), "{}", e.message());
        }
        let mut rel_guest = share(&inner);
        rel_guest.guest_path = "work".into();
        assert!(check_share(&rel_guest, std::slice::from_ref(&root)).is_err());
    }
}
