//! Taking and restoring snapshots through QEMU's migration stream: QMP
//! `migrate fd:` out of a paused guest, `migrate-incoming fd:` into a QEMU
//! started with `-incoming defer`.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::files::{checksum, copy_sparse, open_checked, PartialDir};
use super::manifest;
use super::{
    AfterSnapshot, QemuRestoreConfig, QemuSnapshotInfo, SnapshotMemory, SnapshotTimings,
    MEMORY_FILE, STATE_FILE,
};
use nook_fsutil::io_err;

use crate::cmdline::{Launch, RamBacking};
use crate::config::locate_qemu;
use crate::error::{QemuError, QemuSnapshotError};
use crate::qmp::QmpError;
use crate::vm::QemuVm;

/// The name under which the state file's descriptor is handed to QEMU.
const STATE_FD_NAME: &str = "nook-snapshot";
/// How long saving the state may take. The guest is paused, so this is
/// bounded by disk speed; the limit only catches a wedged QEMU.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Migration's default bandwidth cap is 32 MiB/s; the guest is paused, so
/// there is nothing to throttle for.
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

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
        manifest::check_recordable(&config).map_err(take_err)?;
        let qemu_version = greeting_version(self.qmp()?.greeting());
        let partial = PartialDir::create(dir).map_err(take_err)?;

        let status = self.qmp_execute("query-status", None)?;
        let was_running = status["running"].as_bool() == Some(true);
        if was_running {
            self.pause()?;
        }
        let paused_at = Instant::now();
        let saved = self.save_state(dir, partial.path());
        if was_running & (after == AfterSnapshot::Resume || saved.is_err()) {
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
        let manifest = manifest::encode(&info).map_err(take_err)?;
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
            .map_err(|source| take_err(io_err("create", &state_path)(source).into()))?;
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
            take_err(io_err("copy guest RAM into", &memory_path)(source).into())
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
        let info = manifest::read(snapshot).map_err(restore_err)?;
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
                if info.config.balloon.is_some() {
                    // QEMU gives balloon pages back by punching holes in
                    // the RAM file, even one mapped privately: a clone
                    // with a balloon gets its own copy, or it would punch
                    // them into the snapshot every clone maps.
                    let own = run_dir.join(crate::config::GUEST_RAM_FILE);
                    copy_sparse(&path, &own).map_err(|source| {
                        restore_err(io_err("copy guest RAM into", &own)(source).into())
                    })?;
                    RamBacking::File {
                        path: own,
                        shared: true,
                    }
                } else {
                    RamBacking::File {
                        path,
                        shared: false,
                    }
                }
            }
        };
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => locate_qemu()?,
        };
        let cfg = manifest::restore_config(&info.config, binary, run_dir, &options)
            .map_err(restore_err)?;
        cfg.validate()?;
        let binary = cfg.binary.clone();
        let launch = Launch {
            ram,
            incoming: true,
        };
        // From here on, dropping `vm` on an error kills and reaps QEMU.
        let net = options.net.as_ref().map(|s| s.as_fd());
        let mut vm = QemuVm::launch(cfg, launch, Some(state.as_fd()), net)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_release_series() {
        let greeting = json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}}}});
        assert_eq!(greeting_version(&greeting), "7.2.22");
        assert_eq!(major_minor("7.2.22"), "7.2");
        assert_eq!(major_minor("8"), "8");
        assert_eq!(greeting_version(&json!({})), "?.?.?");
    }
}
