//! Snapshots of a running guest, and clones restored from them.
//!
//! A snapshot is QEMU's own migration stream, written through a file
//! descriptor handed over QMP (`getfd` + `migrate fd:NAME`: QEMU 7.2 has no
//! `file:` URI, and the seccomp sandbox forbids `exec:`), plus a manifest
//! that lets [`QemuVm::restore`] rebuild the identical command line. A
//! restore starts QEMU with `-incoming defer` and feeds it the stream with
//! `migrate-incoming fd:N`, N being the state file inherited at spawn.
//!
//! Guest RAM goes one of two ways (see [`GuestRam`]):
//!
//! - **stream**: RAM travels inside the stream; a restore copies every used
//!   page back into fresh anonymous memory.
//! - **file**: the VM's RAM is a shared file; the stream skips it
//!   (`x-ignore-shared`) and the snapshot keeps a sparse copy of the file.
//!   Clones map that copy `share=off`: copy-on-write, nothing is loaded.
//!
//! On-disk layout (`dir` as passed to [`QemuVm::snapshot`]):
//!
//! ```text
//! dir/
//!   manifest.json   format, QEMU version, config minus run_dir, sizes, CRC32 of state
//!   state           QEMU migration stream (device state; all RAM in stream mode)
//!   memory          guest RAM image, sparse, memory_mib MiB long (file mode only)
//! ```
//!
//! Everything is written into a hidden sibling `.NAME.partial-PID-NANOS`,
//! fsynced, then renamed to `dir`: a directory named `dir` is always a
//! complete snapshot, and an interrupted one leaves only the hidden
//! sibling.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};
use tracing::{debug, info, warn};

use crate::cmdline::{Launch, RamBacking};
use crate::config::{Accel, DiskCache, GuestRam, QemuConfig, QemuDiskConfig};
use crate::error::QemuError;
use crate::qmp::QmpError;
use crate::sys;
use crate::vm::QemuVm;

/// Name of the manifest inside a snapshot directory; written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the migration stream inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the guest RAM image inside a snapshot directory (file mode).
pub const MEMORY_FILE: &str = "memory";

const FORMAT: &str = "nook-qemu-snapshot";
const FORMAT_VERSION: u64 = 1;
/// The name under which the state file's descriptor is handed to QEMU.
const STATE_FD_NAME: &str = "nook-snapshot";
/// How long saving the state may take. The guest is paused, so this is
/// bounded by disk speed; the limit only catches a wedged QEMU.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Migration's default bandwidth cap is 32 MiB/s; the guest is paused, so
/// there is nothing to throttle for.
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;
const PAGE: usize = 4096;

/// What can be wrong with a snapshot's files, taking or restoring it.
#[derive(Debug, thiserror::Error)]
pub enum QemuSnapshotError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is missing: this is not a snapshot, or taking it was interrupted; \
         take the snapshot again"
    )]
    ManifestMissing { path: PathBuf },
    #[error("manifest {path} is not valid json: the snapshot is damaged; take it again")]
    ManifestSyntax {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "manifest field {field} is missing or invalid: the snapshot is damaged; take it again"
    )]
    ManifestField { field: &'static str },
    #[error(
        "snapshot format {format} version {version} is not supported (expected {FORMAT} \
         version {FORMAT_VERSION}): take the snapshot again with this nook"
    )]
    UnsupportedFormat { format: String, version: u64 },
    #[error(
        "{path} is {actual} bytes but the manifest says {expected}: the snapshot is \
         truncated or was modified; take it again"
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} does not match its checksum: the snapshot is corrupt; take it again")]
    ChecksumMismatch { path: PathBuf },
    #[error("path {path} is not valid UTF-8 and cannot be recorded in a snapshot manifest")]
    NonUtf8Path { path: PathBuf },
    #[error(
        "snapshot was taken with QEMU {snapshot} but {binary} is QEMU {running}: restore \
         with the same QEMU version or take the snapshot again"
    )]
    QemuVersion {
        snapshot: String,
        running: String,
        binary: PathBuf,
    },
    #[error(
        "disk override {index} does not match the snapshot's disk ({reason}): give one \
         disk per snapshot disk, in order, with the same read-only flag"
    )]
    DiskOverride { index: usize, reason: &'static str },
}

/// What the guest does once its state is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSnapshot {
    /// Runs again if it was running before (QMP `cont`).
    #[default]
    Resume,
    /// Stays paused; [`QemuVm::resume`] continues it later.
    StayPaused,
}

/// Where a snapshot keeps guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMemory {
    /// Inside the migration stream (`state`).
    Stream,
    /// In the `memory` file, mapped copy-on-write by restores.
    File,
}

impl SnapshotMemory {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotMemory::Stream => "stream",
            SnapshotMemory::File => "file",
        }
    }
}

/// How long the parts of taking a snapshot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTimings {
    /// From `stop` to `cont` (or to the end of the RAM copy when the guest
    /// stays paused): the guest's downtime.
    pub paused: Duration,
    /// QEMU writing the migration stream.
    pub save: Duration,
    /// Copying the guest RAM file (file mode; zero otherwise).
    pub memory_copy: Duration,
    /// The whole call, including fsync, checksum and manifest.
    pub total: Duration,
}

/// A snapshot as its manifest describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuSnapshotInfo {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The config the VM ran with, `run_dir` empty and `cmdline` as passed
    /// to the kernel (TSC hint included, `tsc_hint` off).
    pub config: QemuConfig,
    /// Where guest RAM is kept.
    pub memory: SnapshotMemory,
    /// The QEMU version that wrote the stream, e.g. `7.2.22`.
    pub qemu_version: String,
    /// Size of the migration stream file.
    pub state_bytes: u64,
    /// Bytes of guest RAM actually stored in the `memory` file (its holes
    /// excluded); zero in stream mode.
    pub memory_data_bytes: u64,
    /// CRC-32 of the state file.
    pub state_crc32: u32,
    /// Set when this value comes from [`QemuVm::snapshot`].
    pub timings: Option<SnapshotTimings>,
}

/// Changes a restore may make to the snapshot's configuration. Anything
/// that shapes the device model stays as recorded.
#[derive(Debug, Clone)]
pub struct QemuRestoreConfig {
    /// Another QEMU binary (it must be the same QEMU version).
    pub binary: Option<PathBuf>,
    /// Replacement disks, one per snapshot disk, in order, with the same
    /// read-only flags: a clone needs its own copy of every writable disk
    /// (QEMU's image locking refuses to share one).
    pub disks: Option<Vec<QemuDiskConfig>>,
    /// Leave the restored guest paused instead of continuing it.
    pub paused: bool,
    /// Check the state file against the manifest's CRC-32 before starting
    /// QEMU (cheap in file mode, where the state is small). Sizes are
    /// always checked.
    pub verify_state: bool,
    /// How long QEMU may take to load the state.
    pub load_timeout: Duration,
}

impl Default for QemuRestoreConfig {
    fn default() -> Self {
        QemuRestoreConfig {
            binary: None,
            disks: None,
            paused: false,
            verify_state: true,
            load_timeout: Duration::from_secs(120),
        }
    }
}

impl QemuSnapshotInfo {
    /// Reads the manifest of the snapshot in `dir`.
    pub fn open(dir: &Path) -> Result<QemuSnapshotInfo, QemuError> {
        read_manifest(dir).map_err(|source| QemuError::SnapshotRestore {
            dir: dir.to_owned(),
            source,
        })
    }
}

impl QemuVm {
    /// Pauses the guest (QMP `stop`).
    pub fn pause(&mut self) -> Result<(), QemuError> {
        self.qmp_execute("stop", None).map(drop)
    }

    /// Continues a paused guest (QMP `cont`), also after a snapshot left it
    /// paused.
    pub fn resume(&mut self) -> Result<(), QemuError> {
        self.qmp_execute("cont", None).map(drop)
    }

    /// Saves the guest into the new directory `dir` (which must not exist;
    /// its parent must): pauses it, has QEMU write its state, copies guest
    /// RAM if it is a [`GuestRam::SharedFile`], then continues or stays
    /// paused per `after`, and only then writes the manifest and renames
    /// the directory into place. On failure the guest is continued if it was
    /// running and nothing named `dir` is left behind.
    ///
    /// Disks are not copied: a snapshot expects them unchanged, so use
    /// read-only disks (or copies) for VMs that will be cloned. Bytes the
    /// host writes into the agent channel while the snapshot is taken may
    /// end up in either the source or the clones; keep the channel quiet.
    pub fn snapshot(
        &mut self,
        dir: &Path,
        after: AfterSnapshot,
    ) -> Result<QemuSnapshotInfo, QemuError> {
        let started = Instant::now();
        let take_err = |source| QemuError::SnapshotTake {
            dir: dir.to_owned(),
            source,
        };
        if dir.symlink_metadata().is_ok() {
            return Err(QemuError::SnapshotExists {
                dir: dir.to_owned(),
            });
        }
        let mut config = self.config.clone();
        config.run_dir = PathBuf::new();
        // Unrecordable paths fail before the guest is touched.
        let config_json = config_to_json(&config).map_err(take_err)?;
        let qemu_version = greeting_version(self.qmp()?.greeting());
        let partial = PartialDir::create(dir).map_err(take_err)?;

        let status = self.qmp_execute("query-status", None)?;
        let was_running = status["running"].as_bool() == Some(true);
        if was_running {
            self.pause()?;
        }
        let paused_at = Instant::now();
        let saved = self.save_state(dir, partial.path());
        if was_running && (after == AfterSnapshot::Resume || saved.is_err()) {
            match self.resume() {
                Ok(()) => {}
                Err(e) if saved.is_ok() => return Err(e),
                // The snapshot's own error is the one to report.
                Err(e) => warn!(target: "nook::qemu", pid = self.pid(), error = %e,
                                "cannot continue the guest after a failed snapshot"),
            }
        }
        let paused = paused_at.elapsed();
        let (memory, save, memory_copy, memory_data_bytes) = saved?;

        let state_path = partial.path().join(STATE_FILE);
        let (state_bytes, state_crc32) = checksum(&state_path).map_err(take_err)?;
        let mut info = QemuSnapshotInfo {
            dir: dir.to_owned(),
            config,
            memory,
            qemu_version,
            state_bytes,
            memory_data_bytes,
            state_crc32,
            timings: None,
        };
        let manifest = manifest_json(&info, config_json);
        partial.commit(dir, &manifest, memory).map_err(take_err)?;
        let timings = SnapshotTimings {
            paused,
            save,
            memory_copy,
            total: started.elapsed(),
        };
        info!(target: "nook::qemu", pid = self.pid(), dir = %dir.display(),
              memory = memory.as_str(), state_bytes, memory_data_bytes,
              paused_ms = paused.as_millis() as u64,
              total_ms = timings.total.as_millis() as u64, "snapshot taken");
        info.timings = Some(timings);
        Ok(info)
    }

    /// Has QEMU write the migration stream into `partial/state` and copies
    /// shared guest RAM to `partial/memory`. The guest is paused.
    fn save_state(
        &mut self,
        dir: &Path,
        partial: &Path,
    ) -> Result<(SnapshotMemory, Duration, Duration, u64), QemuError> {
        let take_err = |source| QemuError::SnapshotTake {
            dir: dir.to_owned(),
            source,
        };
        let shared_ram = match &self.ram {
            RamBacking::File { path, shared: true } => Some(path.clone()),
            _ => None,
        };
        let started = Instant::now();
        self.qmp_execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "x-ignore-shared", "state": shared_ram.is_some()},
            ]})),
        )?;
        self.qmp_execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": UNLIMITED_BANDWIDTH})),
        )?;
        let state_path = partial.join(STATE_FILE);
        let state = File::options()
            .write(true)
            .create_new(true)
            .open(&state_path)
            .map_err(|source| {
                take_err(QemuSnapshotError::Io {
                    op: "create",
                    path: state_path.clone(),
                    source,
                })
            })?;
        let handed = self.qmp()?.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": STATE_FD_NAME })),
            state.as_fd(),
        );
        handed.map_err(|e| self.qmp_failed(e))?;
        drop(state);
        self.qmp_execute(
            "migrate",
            Some(json!({ "uri": format!("fd:{STATE_FD_NAME}") })),
        )?;
        if let Err(desc) = self.wait_migration(SAVE_TIMEOUT)? {
            return Err(QemuError::SaveFailed {
                dir: dir.to_owned(),
                pid: self.pid(),
                desc,
                report: Box::new(self.diagnostics()),
            });
        }
        let save = started.elapsed();
        let Some(ram) = shared_ram else {
            return Ok((SnapshotMemory::Stream, save, Duration::ZERO, 0));
        };
        let copy_started = Instant::now();
        let memory_path = partial.join(MEMORY_FILE);
        let data = copy_sparse(&ram, &memory_path).map_err(|source| {
            take_err(QemuSnapshotError::Io {
                op: "copy guest RAM into",
                path: memory_path.clone(),
                source,
            })
        })?;
        Ok((SnapshotMemory::File, save, copy_started.elapsed(), data))
    }

    /// Polls `query-migrate` until the migration (outgoing, or incoming on
    /// a restoring QEMU) ends. `Ok(Err(desc))` is a migration QEMU reports
    /// as failed; `Err` is QEMU gone or QMP broken.
    fn wait_migration(&mut self, timeout: Duration) -> Result<Result<(), String>, QemuError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let status = self.qmp_execute("query-migrate", None)?;
            match status["status"].as_str().unwrap_or("none") {
                "completed" => return Ok(Ok(())),
                "failed" | "cancelled" | "cancelling" => {
                    let desc = status["error-desc"]
                        .as_str()
                        .unwrap_or("migration failed without a reason")
                        .to_owned();
                    return Ok(Err(desc));
                }
                other => {
                    debug!(target: "nook::qemu", pid = self.pid(), status = other, "migration")
                }
            }
            if Instant::now() >= deadline {
                let _ = self.qmp_execute("migrate_cancel", None);
                return Err(QemuError::Qmp {
                    pid: self.pid(),
                    source: QmpError::Timeout {
                        waiting_for: "the migration to complete".into(),
                        timeout,
                    },
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Starts a clone of the snapshot in `snapshot` with its run directory
    /// in `run_dir`: same device model, state loaded by QEMU (`-incoming
    /// defer` + `migrate-incoming`), guest RAM mapped copy-on-write from the
    /// snapshot's `memory` file in file mode. Returns once the state is
    /// loaded and the guest continued (unless [`QemuRestoreConfig::paused`]).
    ///
    /// The clone's `nook.agent` port is connected to a new socket pair,
    /// taken with [`QemuVm::take_agent_channel`] as after a cold boot; the
    /// guest's open port simply continues. On any failure QEMU is killed
    /// and reaped, and the error carries QEMU's stderr.
    ///
    /// Keep the snapshot directory while clones run in file mode: they map
    /// its `memory` file (deleting it is safe, replacing its contents is
    /// not).
    pub fn restore(
        snapshot: &Path,
        run_dir: &Path,
        options: QemuRestoreConfig,
    ) -> Result<QemuVm, QemuError> {
        let restore_err = |source| QemuError::SnapshotRestore {
            dir: snapshot.to_owned(),
            source,
        };
        let info = read_manifest(snapshot).map_err(restore_err)?;
        let state_path = snapshot.join(STATE_FILE);
        let state = open_checked(&state_path, info.state_bytes).map_err(restore_err)?;
        if options.verify_state {
            let (_, crc) = checksum(&state_path).map_err(restore_err)?;
            if crc != info.state_crc32 {
                return Err(restore_err(QemuSnapshotError::ChecksumMismatch {
                    path: state_path,
                }));
            }
        }
        let ram = match info.memory {
            SnapshotMemory::Stream => RamBacking::Anonymous,
            SnapshotMemory::File => {
                let path = snapshot.join(MEMORY_FILE);
                open_checked(&path, u64::from(info.config.memory_mib) << 20)
                    .map_err(restore_err)?;
                RamBacking::File {
                    path,
                    shared: false,
                }
            }
        };
        let mut cfg = info.config.clone();
        cfg.run_dir = run_dir.to_owned();
        if let Some(binary) = options.binary {
            cfg.binary = binary;
        }
        if let Some(disks) = options.disks {
            check_disk_overrides(&cfg.disks, &disks).map_err(restore_err)?;
            cfg.disks = disks;
        }
        cfg.validate()?;
        let binary = cfg.binary.clone();
        let launch = Launch {
            ram,
            incoming: true,
        };
        // From here on, dropping `vm` on an error kills and reaps QEMU.
        let mut vm = QemuVm::launch(cfg, launch, Some(state.as_fd()))?;
        let state_fd = std::os::fd::AsRawFd::as_raw_fd(&state);
        drop(state);

        let running = greeting_version(vm.qmp()?.greeting());
        if major_minor(&running) != major_minor(&info.qemu_version) {
            return Err(restore_err(QemuSnapshotError::QemuVersion {
                snapshot: info.qemu_version,
                running,
                binary,
            }));
        }
        vm.qmp_execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "x-ignore-shared", "state": info.memory == SnapshotMemory::File},
            ]})),
        )?;
        // A regular file never blocks, so QEMU loads the whole stream in one
        // go and answers QMP again only when done.
        let saved_timeout = vm.qmp_timeout;
        vm.set_qmp_timeout(options.load_timeout);
        let loaded = vm
            .qmp_execute(
                "migrate-incoming",
                Some(json!({ "uri": format!("fd:{state_fd}") })),
            )
            .and_then(|_| vm.wait_migration(options.load_timeout));
        vm.set_qmp_timeout(saved_timeout);
        let failure = match loaded {
            Ok(Ok(())) => None,
            Ok(Err(desc)) => Some(desc),
            // QEMU exits when it cannot load the stream.
            Err(QemuError::Exited { status, .. }) => Some(format!("qemu exited with {status}")),
            Err(e) => return Err(e),
        };
        if let Some(desc) = failure {
            return Err(QemuError::LoadFailed {
                dir: snapshot.to_owned(),
                pid: vm.pid(),
                desc,
                report: Box::new(vm.diagnostics()),
            });
        }
        if !options.paused {
            vm.resume()?;
        }
        info!(target: "nook::qemu", pid = vm.pid(), snapshot = %snapshot.display(),
              memory = info.memory.as_str(),
              restore_ms = vm.uptime().as_millis() as u64, "snapshot restored");
        Ok(vm)
    }
}

/// A hidden sibling directory that becomes the snapshot by rename, and is
/// removed if that never happens.
#[derive(Debug)]
struct PartialDir {
    path: PathBuf,
    committed: bool,
}

impl PartialDir {
    fn create(dir: &Path) -> Result<PartialDir, QemuSnapshotError> {
        let name = dir.file_name().ok_or_else(|| QemuSnapshotError::Io {
            op: "name a snapshot directory",
            path: dir.to_owned(),
            source: io::ErrorKind::InvalidInput.into(),
        })?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".partial-{}-{nanos}", std::process::id()));
        let path = dir.with_file_name(hidden);
        std::fs::create_dir(&path).map_err(|source| QemuSnapshotError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
        Ok(PartialDir {
            path,
            committed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data files, writes the manifest, and renames the directory
    /// to `dir`.
    fn commit(
        mut self,
        dir: &Path,
        manifest: &Value,
        memory: SnapshotMemory,
    ) -> Result<(), QemuSnapshotError> {
        let mut files = vec![STATE_FILE];
        if memory == SnapshotMemory::File {
            files.push(MEMORY_FILE);
        }
        for name in files {
            let path = self.path.join(name);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|source| QemuSnapshotError::Io {
                    op: "sync",
                    path,
                    source,
                })?;
        }
        let path = self.path.join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(manifest).unwrap_or_default();
        text.push('\n');
        std::fs::write(&path, text)
            .and_then(|()| File::open(&path)?.sync_all())
            .map_err(|source| QemuSnapshotError::Io {
                op: "write",
                path,
                source,
            })?;
        sync_dir(&self.path)?;
        std::fs::rename(&self.path, dir).map_err(|source| QemuSnapshotError::Io {
            op: "rename the finished snapshot to",
            path: dir.to_owned(),
            source,
        })?;
        self.committed = true;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                warn!(target: "nook::qemu", path = %self.path.display(), error = %e,
                      "cannot remove an unfinished snapshot");
            }
        }
    }
}

fn sync_dir(path: &Path) -> Result<(), QemuSnapshotError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|source| QemuSnapshotError::Io {
            op: "sync directory",
            path: path.to_owned(),
            source,
        })
}

/// Opens `path` and checks that it is `expected` bytes long.
fn open_checked(path: &Path, expected: u64) -> Result<File, QemuSnapshotError> {
    let io_err = |source| QemuSnapshotError::Io {
        op: "open",
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let actual = file.metadata().map_err(io_err)?.len();
    if actual != expected {
        return Err(QemuSnapshotError::SizeMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(file)
}

/// Length and CRC-32 of a file.
fn checksum(path: &Path) -> Result<(u64, u32), QemuSnapshotError> {
    let io_err = |source| QemuSnapshotError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize()))
}

/// Copies `src` to the new file `dst` keeping it sparse: holes are skipped
/// (`SEEK_DATA`/`SEEK_HOLE`) and so are all-zero pages within data. Returns
/// the bytes written.
fn copy_sparse(src: &Path, dst: &Path) -> io::Result<u64> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = File::options().write(true).create_new(true).open(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let Some(start) = sys::seek_data(&from, pos)? else {
            break;
        };
        let end = sys::seek_hole(&from, start)?.unwrap_or(len).min(len);
        let mut offset = start;
        while offset < end {
            let n = usize::try_from(end - offset).map_or(buf.len(), |left| left.min(buf.len()));
            let chunk = &mut buf[..n];
            from.read_exact_at(chunk, offset)?;
            for (run_start, run) in nonzero_runs(chunk) {
                to.write_all_at(run, offset + run_start as u64)?;
                written += run.len() as u64;
            }
            offset += n as u64;
        }
        pos = end.max(pos + 1);
    }
    to.set_len(len)?;
    Ok(written)
}

/// The maximal runs of pages of `buf` that are not all zero, with their
/// offsets.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut run_start = None;
    static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
    for (i, page) in buf.chunks(PAGE).enumerate() {
        // A slice comparison is a memcmp, fast even in debug builds.
        let zero = page == &ZERO_PAGE[..page.len()];
        match (zero, run_start) {
            (false, None) => run_start = Some(i * PAGE),
            (true, Some(start)) => {
                runs.push((start, &buf[start..i * PAGE]));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        runs.push((start, &buf[start..]));
    }
    runs
}

fn check_disk_overrides(
    recorded: &[QemuDiskConfig],
    given: &[QemuDiskConfig],
) -> Result<(), QemuSnapshotError> {
    if given.len() != recorded.len() {
        return Err(QemuSnapshotError::DiskOverride {
            index: given.len().min(recorded.len()),
            reason: "the number of disks differs",
        });
    }
    for (index, (r, g)) in recorded.iter().zip(given).enumerate() {
        if r.read_only != g.read_only {
            return Err(QemuSnapshotError::DiskOverride {
                index,
                reason: "the read-only flag differs",
            });
        }
    }
    Ok(())
}

/// `major.minor.micro` from a QMP greeting.
fn greeting_version(greeting: &Value) -> String {
    let v = &greeting["QMP"]["version"]["qemu"];
    let part = |k: &str| {
        v[k].as_u64()
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    format!("{}.{}.{}", part("major"), part("minor"), part("micro"))
}

/// Migration streams are compatible within a QEMU release series; `microvm`
/// is not a versioned machine type, so across series they may not be.
fn major_minor(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

fn path_json(path: &Path) -> Result<Value, QemuSnapshotError> {
    path.to_str()
        .map(|s| Value::String(s.to_owned()))
        .ok_or_else(|| QemuSnapshotError::NonUtf8Path {
            path: path.to_owned(),
        })
}

fn config_to_json(cfg: &QemuConfig) -> Result<Value, QemuSnapshotError> {
    let disks = cfg
        .disks
        .iter()
        .map(|d| {
            Ok(json!({
                "path": path_json(&d.path)?,
                "read_only": d.read_only,
                "cache": d.cache.as_qemu_arg(),
                "serial": d.serial,
            }))
        })
        .collect::<Result<Vec<_>, QemuSnapshotError>>()?;
    Ok(json!({
        "binary": path_json(&cfg.binary)?,
        "accel": cfg.accel.as_qemu_arg(),
        "kernel": path_json(&cfg.kernel)?,
        "initrd": cfg.initrd.as_deref().map(path_json).transpose()?,
        "cmdline": cfg.cmdline,
        "memory_mib": cfg.memory_mib,
        "vcpus": cfg.vcpus,
        "disks": disks,
        "rng": cfg.rng,
        "sandbox": cfg.sandbox,
        "cpu_model": cfg.cpu_model,
        "extra_args": cfg.extra_args,
    }))
}

fn manifest_json(info: &QemuSnapshotInfo, config: Value) -> Value {
    let created_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created_unix_ms": created_ms,
        "qemu_version": info.qemu_version,
        "memory": info.memory.as_str(),
        "memory_data_bytes": info.memory_data_bytes,
        "state_bytes": info.state_bytes,
        "state_crc32": info.state_crc32,
        "config": config,
    })
}

fn read_manifest(dir: &Path) -> Result<QemuSnapshotInfo, QemuSnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QemuSnapshotError::ManifestMissing { path })
        }
        Err(source) => {
            return Err(QemuSnapshotError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let value: Value = serde_json::from_slice(&text)
        .map_err(|source| QemuSnapshotError::ManifestSyntax { path, source })?;
    let top = value.as_object().ok_or(QemuSnapshotError::ManifestField {
        field: "(top level)",
    })?;
    let format = str_field(top, "format")?;
    let version = u64_field(top, "version")?;
    if format != FORMAT || version != FORMAT_VERSION {
        return Err(QemuSnapshotError::UnsupportedFormat {
            format: format.to_owned(),
            version,
        });
    }
    let memory = match str_field(top, "memory")? {
        "stream" => SnapshotMemory::Stream,
        "file" => SnapshotMemory::File,
        _ => return Err(QemuSnapshotError::ManifestField { field: "memory" }),
    };
    let config = top
        .get("config")
        .and_then(Value::as_object)
        .ok_or(QemuSnapshotError::ManifestField { field: "config" })?;
    Ok(QemuSnapshotInfo {
        dir: dir.to_owned(),
        config: config_from_json(config)?,
        memory,
        qemu_version: str_field(top, "qemu_version")?.to_owned(),
        state_bytes: u64_field(top, "state_bytes")?,
        memory_data_bytes: u64_field(top, "memory_data_bytes")?,
        state_crc32: u32::try_from(u64_field(top, "state_crc32")?).map_err(|_| {
            QemuSnapshotError::ManifestField {
                field: "state_crc32",
            }
        })?,
        timings: None,
    })
}

fn config_from_json(c: &Map<String, Value>) -> Result<QemuConfig, QemuSnapshotError> {
    let accel = match str_field(c, "accel")? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return Err(QemuSnapshotError::ManifestField { field: "accel" }),
    };
    let mut cfg = QemuConfig::new(
        str_field(c, "binary")?,
        accel,
        str_field(c, "kernel")?,
        PathBuf::new(),
    );
    cfg.initrd = match c.get("initrd") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(PathBuf::from(s)),
        Some(_) => return Err(QemuSnapshotError::ManifestField { field: "initrd" }),
    };
    cfg.cmdline = str_field(c, "cmdline")?.to_owned();
    cfg.tsc_hint = false;
    // Snapshots taken before the rename spell it `mem_mib`.
    let memory_mib = u64_field(c, "memory_mib").or_else(|_| u64_field(c, "mem_mib"))?;
    cfg.memory_mib = u32::try_from(memory_mib).map_err(|_| QemuSnapshotError::ManifestField {
        field: "memory_mib",
    })?;
    cfg.vcpus = u8::try_from(u64_field(c, "vcpus")?)
        .map_err(|_| QemuSnapshotError::ManifestField { field: "vcpus" })?;
    cfg.rng = bool_field(c, "rng")?;
    cfg.sandbox = bool_field(c, "sandbox")?;
    cfg.cpu_model = match c.get("cpu_model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(QemuSnapshotError::ManifestField { field: "cpu_model" }),
    };
    cfg.extra_args = array_field(c, "extra_args")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or(QemuSnapshotError::ManifestField {
            field: "extra_args",
        })?;
    cfg.disks = array_field(c, "disks")?
        .iter()
        .map(|d| {
            let d = d
                .as_object()
                .ok_or(QemuSnapshotError::ManifestField { field: "disks" })?;
            let cache = match str_field(d, "cache")? {
                "writeback" => DiskCache::Writeback,
                "none" => DiskCache::Direct,
                "unsafe" => DiskCache::Unsafe,
                _ => return Err(QemuSnapshotError::ManifestField { field: "cache" }),
            };
            Ok(QemuDiskConfig {
                path: str_field(d, "path")?.into(),
                read_only: bool_field(d, "read_only")?,
                cache,
                serial: d.get("serial").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect::<Result<_, QemuSnapshotError>>()?;
    cfg.ram = GuestRam::Anonymous;
    Ok(cfg)
}

fn str_field<'a>(
    o: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, QemuSnapshotError> {
    o.get(field)
        .and_then(Value::as_str)
        .ok_or(QemuSnapshotError::ManifestField { field })
}

fn u64_field(o: &Map<String, Value>, field: &'static str) -> Result<u64, QemuSnapshotError> {
    o.get(field)
        .and_then(Value::as_u64)
        .ok_or(QemuSnapshotError::ManifestField { field })
}

fn bool_field(o: &Map<String, Value>, field: &'static str) -> Result<bool, QemuSnapshotError> {
    o.get(field)
        .and_then(Value::as_bool)
        .ok_or(QemuSnapshotError::ManifestField { field })
}

fn array_field<'a>(
    o: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Vec<Value>, QemuSnapshotError> {
    o.get(field)
        .and_then(Value::as_array)
        .ok_or(QemuSnapshotError::ManifestField { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_config() -> QemuConfig {
        let mut cfg = QemuConfig::new("/usr/bin/qemu", Accel::Tcg, "/k/vmlinuz", "");
        cfg.initrd = Some("/k/initrd,x".into());
        cfg.cmdline = "console=ttyS0 tsc_early_khz=2445428".into();
        cfg.tsc_hint = false;
        cfg.memory_mib = 512;
        cfg.vcpus = 2;
        cfg.rng = false;
        cfg.cpu_model = Some("qemu64".into());
        cfg.extra_args = vec!["-S".into()];
        let mut disk = QemuDiskConfig::new("/d/scratch.raw", false);
        disk.cache = DiskCache::Unsafe;
        cfg.disks = vec![QemuDiskConfig::new("/d/root.raw", true), disk];
        cfg
    }

    #[test]
    fn manifest_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let info = QemuSnapshotInfo {
            dir: dir.path().to_owned(),
            config: sample_config(),
            memory: SnapshotMemory::File,
            qemu_version: "7.2.22".into(),
            state_bytes: 58_810,
            memory_data_bytes: 90 << 20,
            state_crc32: 0xdead_beef,
            timings: None,
        };
        let value = manifest_json(&info, config_to_json(&info.config).unwrap());
        std::fs::write(dir.path().join(MANIFEST_FILE), value.to_string()).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), info);
    }

    #[test]
    fn damaged_manifests_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_manifest(dir.path()).unwrap_err();
        assert!(
            matches!(err, QemuSnapshotError::ManifestMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("take the snapshot again"), "{err}");

        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, b"{\"format\": ").unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(QemuSnapshotError::ManifestSyntax { .. })
        ));

        let info = QemuSnapshotInfo {
            dir: dir.path().to_owned(),
            config: sample_config(),
            memory: SnapshotMemory::Stream,
            qemu_version: "7.2.22".into(),
            state_bytes: 1,
            memory_data_bytes: 0,
            state_crc32: 1,
            timings: None,
        };
        let good = manifest_json(&info, config_to_json(&info.config).unwrap());
        let mut bad = good.clone();
        bad["version"] = json!(99);
        std::fs::write(&path, bad.to_string()).unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(QemuSnapshotError::UnsupportedFormat { version: 99, .. })
        ));
        let mut bad = good.clone();
        bad["config"]["vcpus"] = json!(1000);
        std::fs::write(&path, bad.to_string()).unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(QemuSnapshotError::ManifestField { field: "vcpus" })
        ));
        let mut bad = good;
        bad["config"]["disks"][1]["cache"] = json!("sometimes");
        std::fs::write(&path, bad.to_string()).unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(QemuSnapshotError::ManifestField { field: "cache" })
        ));
    }

    #[test]
    fn non_utf8_paths_cannot_be_recorded() {
        use std::os::unix::ffi::OsStrExt;
        let mut cfg = sample_config();
        cfg.kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k/\xff"));
        assert!(matches!(
            config_to_json(&cfg),
            Err(QemuSnapshotError::NonUtf8Path { .. })
        ));
    }

    #[test]
    fn sparse_copy_keeps_data_and_drops_zero_pages_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ram");
        let file = File::create(&src).unwrap();
        let mib = 1u64 << 20;
        file.set_len(16 * mib).unwrap();
        file.write_all_at(&[7u8; 5000], 3 * mib + 100).unwrap();
        // A written but all-zero region: data to SEEK_DATA, skipped anyway.
        file.write_all_at(&vec![0u8; mib as usize], 8 * mib)
            .unwrap();
        file.write_all_at(b"end", 16 * mib - 3).unwrap();
        drop(file);
        let dst = dir.path().join("copy");
        let written = copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        // Two pages around the 5000 bytes at 3 MiB + 100 (which straddle
        // pages 768..=769), and the last page.
        assert_eq!(written, 3 * PAGE as u64);
        assert!(copy_sparse(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn nonzero_runs_merge_adjacent_pages() {
        let mut buf = vec![0u8; 5 * PAGE + 10];
        buf[PAGE] = 1;
        buf[2 * PAGE + 5] = 1;
        buf[5 * PAGE + 9] = 1;
        let runs: Vec<(usize, usize)> = nonzero_runs(&buf)
            .into_iter()
            .map(|(o, r)| (o, r.len()))
            .collect();
        assert_eq!(runs, [(PAGE, 2 * PAGE), (5 * PAGE, 10)]);
    }

    #[test]
    fn versions_compare_by_release_series() {
        let greeting = json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}}}});
        assert_eq!(greeting_version(&greeting), "7.2.22");
        assert_eq!(major_minor("7.2.22"), "7.2");
        assert_eq!(major_minor("8"), "8");
        assert_eq!(greeting_version(&json!({})), "?.?.?");
    }

    #[test]
    fn disk_overrides_must_match_count_and_read_only() {
        let recorded = vec![
            QemuDiskConfig::new("/a", true),
            QemuDiskConfig::new("/b", false),
        ];
        let same = vec![
            QemuDiskConfig::new("/x", true),
            QemuDiskConfig::new("/y", false),
        ];
        check_disk_overrides(&recorded, &same).unwrap();
        let err = check_disk_overrides(&recorded, &same[..1]).unwrap_err();
        assert!(err.to_string().contains("number of disks"), "{err}");
        let flipped = vec![
            QemuDiskConfig::new("/x", true),
            QemuDiskConfig::new("/y", true),
        ];
        assert!(matches!(
            check_disk_overrides(&recorded, &flipped),
            Err(QemuSnapshotError::DiskOverride { index: 1, .. })
        ));
    }

    #[test]
    fn partial_dir_vanishes_unless_committed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snap");
        let partial = PartialDir::create(&dir).unwrap();
        let hidden = partial.path().to_owned();
        assert!(hidden
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".snap.partial-"));
        std::fs::write(hidden.join(STATE_FILE), b"half").unwrap();
        drop(partial);
        assert!(!hidden.exists() && !dir.exists());

        let partial = PartialDir::create(&dir).unwrap();
        std::fs::write(partial.path().join(STATE_FILE), b"all").unwrap();
        partial
            .commit(&dir, &json!({"x": 1}), SnapshotMemory::Stream)
            .unwrap();
        assert_eq!(std::fs::read(dir.join(STATE_FILE)).unwrap(), b"all");
        assert!(dir.join(MANIFEST_FILE).exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
