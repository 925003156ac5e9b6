//! What a shell leaves for the next one in the same workspace: its working
//! directory and exported variables (`--fresh` ignores them), and its
//! line history, under `$NOOK_HOME/shell/KEY/` (KEY from the workspace's
//! path).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The saved state of a workspace's shell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Workspace-relative (`/demo/hello`).
    pub cwd: String,
    pub env: Vec<(String, String)>,
}

/// A short stable key for the workspace at `path` (FNV-1a, 64 bits).
pub fn workspace_key(path: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `$NOOK_HOME/shell/KEY`.
pub fn state_dir(home: &Path, workspace: &Path) -> PathBuf {
    home.join("shell").join(workspace_key(workspace))
}

impl ResumeState {
    /// The saved state, if any and readable.
    pub fn load(dir: &Path) -> Option<ResumeState> {
        let bytes = std::fs::read(dir.join("state.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, dir.join("state.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let st = ResumeState {
            cwd: "/demo".into(),
            env: vec![("A".into(), "1".into())],
        };
        st.save(dir.path()).unwrap();
        assert_eq!(ResumeState::load(dir.path()), Some(st));
        assert_ne!(
            workspace_key(Path::new("/a")),
            workspace_key(Path::new("/b"))
        );
        assert_eq!(workspace_key(Path::new("/a")).len(), 16);
    }
}
