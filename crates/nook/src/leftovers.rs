//! Leftovers of nook processes that were killed before they could clean
//! up (`kill -9`, a crash, a power cut): their run directories, scratch
//! disks, half-made volumes and half-made snapshots. Every such entry has
//! its owner's pid in its name; it is removed only when that process is
//! gone.
//!
//! | entry | where | name |
//! |---|---|---|
//! | run directory | `$XDG_RUNTIME_DIR`, `/dev/shm`, the temp dir | `nook-PID-N` |
//! | scratch disk | `$NOOK_HOME/tmp` | `.scratch.PID.N.tmp` |
//! | volume being made | `$NOOK_HOME/volumes` | `.NAME.PID.N.tmp` |
//! | snapshot being made or replaced | `$NOOK_HOME/{snapshots,templates}` | `.NAME.partial-PID-N`, `.NAME.old-PID-N` |
//!
//! A pid can be reused: an entry counts as its pid's only when that process
//! started before the entry was last changed (its owner made it after it
//! started; a process that reused the pid started after the owner died,
//! so after its last change). Where `/proc` cannot tell, the entry is kept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What [`gc_leftovers`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftoverGc {
    pub removed: Vec<PathBuf>,
    /// Bytes the removed entries occupied on disk (or in memory, for run
    /// directories in a tmpfs).
    pub freed_bytes: u64,
}

/// The clock tick of `/proc/PID/stat` times: `USER_HZ`, 100 on every Linux
/// architecture nook runs on.
const USER_HZ: u64 = 100;

/// Slack for the start-time comparison: the boot time in `/proc/stat` has
/// whole seconds. More slack only keeps more entries.
const START_SLACK: Duration = Duration::from_secs(2);

/// The directories run directories are made in (see `vm::make_run_dir`).
pub(crate) fn run_dir_bases() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    bases.push(PathBuf::from("/dev/shm"));
    bases.push(std::env::temp_dir());
    bases.dedup();
    bases
}

/// Removes the leftovers of dead nook processes under `home` and in the
/// run-directory bases. Cheap (a few directory listings); a new VM calls
/// it, and `nook gc` / `nook image gc` do.
pub fn gc_leftovers(home: &Path) -> LeftoverGc {
    let mut gc = LeftoverGc::default();
    for base in run_dir_bases() {
        sweep(&base, run_dir_owner, &mut gc);
    }
    sweep(&home.join("tmp"), temp_file_owner, &mut gc);
    sweep(&home.join("volumes"), temp_file_owner, &mut gc);
    for dir in ["snapshots", "templates"] {
        sweep(&home.join(dir), snapshot_temp_owner, &mut gc);
    }
    gc
}

/// `nook-PID-N`.
fn run_dir_owner(name: &str) -> Option<u32> {
    let (pid, seq) = name.strip_prefix("nook-")?.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// `.NAME.PID.N.tmp` (see `storage::unique_temp`).
fn temp_file_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, seq) = rest.rsplit_once('.')?;
    let (_, pid) = rest.rsplit_once('.')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// `.NAME.partial-PID-N` and `.NAME.old-PID-N` (see `snapshot.rs`).
fn snapshot_temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let tail = [".partial-", ".old-"]
        .iter()
        .find_map(|mark| rest.rsplit_once(mark).map(|(_, t)| t))?;
    let (pid, seq) = tail.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn sweep(dir: &Path, owner: fn(&str) -> Option<u32>, gc: &mut LeftoverGc) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // Only our own user's entries (a shared /dev/shm has others').
        if Some(meta.uid()) != me || owner_alive(pid, &meta) {
            continue;
        }
        let bytes = if meta.is_dir() {
            crate::snapshot::disk_usage(&path)
        } else {
            meta.blocks() * 512
        };
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if removed.is_ok() {
            tracing::debug!(
                "nook: removed {} (its process {pid} is gone)",
                path.display()
            );
            gc.freed_bytes += bytes;
            gc.removed.push(path);
        }
    }
}

/// Whether the process `pid` may own an entry last changed as `meta` says.
fn owner_alive(pid: u32, meta: &std::fs::Metadata) -> bool {
    if !Path::new("/proc/self").exists() {
        // No /proc: nothing can be told, so nothing is removed.
        return true;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return false;
    }
    let changed = meta.modified().unwrap_or(UNIX_EPOCH);
    match process_start(pid) {
        // The pid now belongs to a process that started after the entry's
        // last change: the owner is gone.
        Some(start) => start <= changed + START_SLACK,
        None => true,
    }
}

/// When the process `pid` started (from `/proc/PID/stat` and the boot time).
fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after its closing parenthesis start with field 3.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_the_names_nook_gives() {
        assert_eq!(run_dir_owner("nook-1234-0"), Some(1234));
        assert_eq!(run_dir_owner("nook-x-0"), None);
        assert_eq!(run_dir_owner("nook-12"), None);
        assert_eq!(temp_file_owner(".scratch.77.3.tmp"), Some(77));
        assert_eq!(temp_file_owner(".my.vol.77.3.tmp"), Some(77));
        assert_eq!(temp_file_owner("data.ext4"), None);
        assert_eq!(temp_file_owner(".data.ext4.lock"), None);
        assert_eq!(snapshot_temp_owner(".warm.partial-99-0"), Some(99));
        assert_eq!(snapshot_temp_owner(".a.b.old-99-2"), Some(99));
        assert_eq!(snapshot_temp_owner("warm"), None);
    }

    #[test]
    fn this_process_started_before_its_files_and_after_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        assert!(owner_alive(std::process::id(), &meta));
        // A file last changed long before this process started belongs to
        // an earlier owner of its pid.
        let old = std::fs::File::options().write(true).open(&f).unwrap();
        old.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        assert!(!owner_alive(std::process::id(), &meta));
    }

    #[test]
    fn dead_owners_entries_go_and_live_ones_stay() {
        let home = tempfile::tempdir().unwrap();
        let tmp = home.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let dead = dead_pid();
        let gone = tmp.join(format!(".scratch.{dead}.0.tmp"));
        let live = tmp.join(format!(".scratch.{}.0.tmp", std::process::id()));
        let other = tmp.join("unrelated");
        for f in [&gone, &live, &other] {
            std::fs::write(f, b"data").unwrap();
        }
        let snaps = home.path().join("snapshots");
        let partial = snaps.join(format!(".warm.partial-{dead}-0"));
        std::fs::create_dir_all(partial.join("engine")).unwrap();
        let gc = gc_leftovers(home.path());
        assert!(gc.removed.contains(&gone) && gc.removed.contains(&partial));
        assert!(!gone.exists() && !partial.exists());
        assert!(live.exists() && other.exists());
    }

    /// A pid no process has now.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }
}
