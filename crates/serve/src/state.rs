//! Where sessions live on disk and what `nook ps` reads.
//!
//! ```text
//! $NOOK_HOME/sessions/            0700
//!   NAME/                         0700
//!     spec.json                   SessionSpec: what to boot (written by start)
//!     state.json                  SessionState: written by the host process
//!     sock                        the host's socket (0600), while it serves
//!     host.log                    the host process's stderr
//!     procs/PID.log               output of detached processes
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::SessionError;

/// What a session boots, chosen by `nook start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub name: String,
    /// Image reference in the store (already pulled); the built-in root when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// `auto`, `qemu` or `kvm`.
    pub engine: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub agent: Option<PathBuf>,
    pub boot_timeout_s: u64,
    /// Restore this configuration's template snapshot when there is one.
    pub template: bool,
    /// Stop after this many seconds without a running command or client.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// Stop this many seconds after the start.
    #[serde(default)]
    pub max_duration_s: Option<u64>,
    /// The VM's network (`nook start --net`, `-p`, `--allow`, ...); none
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<nook::NetConfig>,
    /// Environment every command in the session starts with (a command's
    /// own variables win).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Host directories shared into the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<SpecMount>,
    /// ext4 disk images (named volumes' files) mounted in the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<SpecMount>,
    /// Restore this snapshot directory instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
    /// A memory balloon (`nook start --balloon`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<nook::BalloonConfig>,
}

impl SessionSpec {
    /// A session of nook's built-in root with these resources, restored from
    /// its template when there is one, and nothing else: no image, no
    /// kernel or agent override, no limits, network, env, mounts or
    /// snapshot. Callers set the rest with struct update syntax.
    pub fn new(
        name: impl Into<String>,
        engine: impl Into<String>,
        memory_mib: u32,
        vcpus: u8,
        boot_timeout_s: u64,
    ) -> SessionSpec {
        SessionSpec {
            name: name.into(),
            image: None,
            engine: engine.into(),
            memory_mib,
            vcpus,
            kernel: None,
            agent: None,
            boot_timeout_s,
            template: true,
            idle_timeout_s: None,
            max_duration_s: None,
            net: None,
            env: Vec::new(),
            shares: Vec::new(),
            volumes: Vec::new(),
            snapshot: None,
            balloon: None,
        }
    }

    /// This spec restoring `snapshot` instead of booting: the VM has the
    /// snapshot's memory and vCPUs, and no template applies.
    pub fn restoring(self, snapshot: &nook::Snapshot) -> SessionSpec {
        SessionSpec {
            memory_mib: snapshot.manifest.memory_mib,
            vcpus: snapshot.manifest.vcpus,
            template: false,
            snapshot: Some(snapshot.path.clone()),
            ..self
        }
    }
}

/// A host path mounted in the guest: a shared directory or a disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecMount {
    pub host_path: PathBuf,
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

impl From<&nook::ShareConfig> for SpecMount {
    fn from(s: &nook::ShareConfig) -> SpecMount {
        SpecMount {
            host_path: s.host_dir.clone(),
            guest_path: s.guest_path.clone(),
            read_only: s.read_only,
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionPhase {
    Starting,
    Running,
    Exited,
}

/// What `nook ps` shows; written by the host process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub name: String,
    /// The engine the VM runs on (`qemu`, `kvm`), or the one asked for while starting.
    pub engine: String,
    pub image: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The session host process.
    pub pid: u32,
    pub state: SessionPhase,
    /// Why it exited.
    #[serde(default)]
    pub exit_reason: Option<String>,
    /// Published ports as bound on the host (they close with the session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<nook::PublishedPort>,
    /// What the VM's network did (refused flows included), refreshed while
    /// the session runs; absent without a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<nook::NetStats>,
    /// The VM's memory and balloon, refreshed while the session runs;
    /// absent without a balloon. Boxed: most sessions have none, and the
    /// state travels in every daemon reply about a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Box<nook::MemoryStats>>,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `$NOOK_HOME/sessions`.
pub fn sessions_dir(home: &Path) -> PathBuf {
    home.join("sessions")
}

/// Session names: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), SessionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SessionError::BadName(name.to_string()))
    }
}

/// Creates `dir` (and parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SessionError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SessionError::io("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| SessionError::io("chmod", dir, e))
}

/// One session's directory.
#[derive(Debug, Clone)]
pub struct SessionDir(pub PathBuf);

impl SessionDir {
    pub fn new(home: &Path, name: &str) -> Result<SessionDir, SessionError> {
        validate_name(name)?;
        Ok(SessionDir(sessions_dir(home).join(name)))
    }
    pub fn spec_path(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.0.join("sock")
    }
    pub fn host_log(&self) -> PathBuf {
        self.0.join("host.log")
    }
    pub fn procs_dir(&self) -> PathBuf {
        self.0.join("procs")
    }

    pub fn read_spec(&self) -> Result<SessionSpec, SessionError> {
        read_json(&self.spec_path())
    }

    /// The state as written, corrected for a host process that died without
    /// saying so: such a session is `exited`, never `running`.
    pub fn read_state(&self) -> Result<SessionState, SessionError> {
        let mut st: SessionState = read_json(&self.state_path())?;
        if st.state != SessionPhase::Exited && !host_alive(st.pid) {
            st.state = SessionPhase::Exited;
            st.exit_reason = Some("the session's host process died".into());
        }
        Ok(st)
    }

    pub fn write_state(&self, st: &SessionState) -> Result<(), SessionError> {
        write_json(&self.state_path(), st)
    }

    pub fn write_spec(&self, spec: &SessionSpec) -> Result<(), SessionError> {
        write_json(&self.spec_path(), spec)
    }
}

fn read_json<T: for<'a> Deserialize<'a>>(path: &Path) -> Result<T, SessionError> {
    let bytes = std::fs::read(path).map_err(|e| SessionError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| SessionError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), SessionError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    std::fs::write(&tmp, bytes).map_err(|e| SessionError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SessionError::io("rename", path, e))
}

/// Whether `pid` is a live session host (not a zombie, not a reused pid).
pub fn host_alive(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    !zombie
        && cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == crate::HOST_SUBCOMMAND.as_bytes())
}

/// Every session with a state file, sorted by name.
pub fn list_sessions(home: &Path) -> Result<Vec<SessionState>, SessionError> {
    let dir = sessions_dir(home);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SessionError::io("list", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(sd) = SessionDir::new(home, &name) else {
            continue;
        };
        if let Ok(st) = sd.read_state() {
            out.push(st);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["s1", "a.b-c_d", "X"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-f", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_running_state_whose_host_is_gone_reads_as_exited() {
        let home = tempfile::tempdir().unwrap();
        let sd = SessionDir::new(home.path(), "s").unwrap();
        create_private_dir(&sd.0).unwrap();
        let st = SessionState {
            name: "s".into(),
            engine: "qemu".into(),
            image: None,
            created_unix: 1,
            memory_mib: 256,
            vcpus: 1,
            // This test process is alive but is no session host.
            pid: std::process::id(),
            state: SessionPhase::Running,
            exit_reason: None,
            published: Vec::new(),
            net: None,
            memory: None,
        };
        sd.write_state(&st).unwrap();
        let back = sd.read_state().unwrap();
        assert_eq!(back.state, SessionPhase::Exited);
        assert!(back.exit_reason.unwrap().contains("host process died"));
        let listed = list_sessions(home.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "s");
    }

    #[test]
    fn state_files_are_frozen() {
        let st: SessionState = serde_json::from_str(
            r#"{"name":"s1","engine":"qemu","image":null,"created_unix":5,"memory_mib":256,"vcpus":1,"pid":9,"state":"running","exit_reason":null}"#,
        )
        .unwrap();
        assert_eq!(st.state, SessionPhase::Running);
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"name":"s1","engine":"qemu","image":null,"created_unix":5,"memory_mib":256,"vcpus":1,"pid":9,"state":"running","exit_reason":null}"#
        );
    }
}
