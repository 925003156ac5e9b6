//! Snapshots of running VMs and VMs restored from them.
//!
//! A snapshot is a directory:
//!
//! ```text
//! NAME/
//!   nook.json   what nook needs: engine, memory, vCPUs, the agent's hello
//!   engine/     the engine's own state (QEMU: migration stream + manifest;
//!               kvm: one snapshot file, memory mapped copy-on-write on restore)
//! ```
//!
//! It is written under a hidden temporary name (`.NAME.partial-PID-N`) and
//! renamed into place, so a crash mid-way never leaves something that
//! looks complete; a replaced one is swapped with the new one in one
//! atomic exchange (`renameat2`), so the name always holds a whole
//! snapshot, and a removed one is first renamed away (`.NAME.old-PID-N`). Those of dead processes are removed by
//! `gc_leftovers`. Named snapshots live in `$NOOK_HOME/snapshots/NAME`; one
//! that cannot be opened is listed as damaged ([`SnapshotScan`]), and can
//! be removed or replaced.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nook_proto::{GuestHello, HostMsg, Resync, CONTROL_STREAM};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::conn::{Conn, FrameSource};
use crate::engine::select::EngineChoice;
use crate::engine::{EngineId, Machine};
use crate::error::VmError;
use crate::vm::{make_run_dir, Vm, VmOrigin};

const MANIFEST: &str = "nook.json";
pub(crate) const ENGINE_DIR: &str = "engine";
const FORMAT: u32 = 2;

/// What `nook.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    /// The engine that ran the VM, and restores its clones.
    pub engine: EngineId,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub kernel_release: String,
    pub agent_protocol: u32,
    pub agent_version: String,
    /// The optional services the agent announced (`desktop`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_features: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The network the VM had (its guest has a NIC when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::NetConfig>,
    /// Where the guest mounted host directory shares, in order: a clone
    /// must be given shares for the same places.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<SharedPath>,
    /// The VM's memory balloon: its clones have the same device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::BalloonConfig>,
    /// The first agent stream id the host had not used: streams below it
    /// may still be open in the guest (a command running when the
    /// snapshot was taken), so a restored VM's host opens new ones from here.
    #[serde(default = "first_stream")]
    pub next_stream: u32,
}

fn first_stream() -> u32 {
    1
}

/// A share as a snapshot records it: where the guest mounted it and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedPath {
    pub guest_path: String,
    pub read_only: bool,
}

fn shared_paths(shares: &[crate::ShareConfig]) -> Vec<SharedPath> {
    shares
        .iter()
        .map(|s| SharedPath {
            guest_path: s.guest_path.clone(),
            read_only: s.read_only,
        })
        .collect()
}

/// Refuses what a restore cannot honour: its disks and shares are the
/// snapshot's, fixed when it was taken.
fn check_restorable(path: &Path, cfg: &VmConfig, m: &SnapshotManifest) -> Result<(), VmError> {
    let refuse = |option: &'static str, why: String| VmError::NotRestorable {
        path: path.to_path_buf(),
        option,
        why,
    };
    if !cfg.volumes.is_empty() {
        return Err(refuse(
            "volumes",
            "a restored VM has the disks it was snapshotted with: boot instead".into(),
        ));
    }
    let wanted = shared_paths(&cfg.shares);
    if wanted != m.shares {
        let list = |s: &[SharedPath]| {
            let paths: Vec<String> = s
                .iter()
                .map(|p| format!("{}{}", p.guest_path, if p.read_only { ":ro" } else { "" }))
                .collect();
            if paths.is_empty() {
                "none".to_string()
            } else {
                paths.join(", ")
            }
        };
        return Err(refuse(
            "shares",
            format!(
                "the guest mounted shares at [{}] before the snapshot, not at [{}]",
                list(&m.shares),
                list(&wanted)
            ),
        ));
    }
    Ok(())
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub path: PathBuf,
    pub manifest: SnapshotManifest,
    /// Bytes allocated on disk.
    pub disk_usage: u64,
}

impl Snapshot {
    /// Opens the snapshot directory `path`, checking its manifest.
    pub fn open(path: &Path) -> Result<Snapshot, VmError> {
        let bad = |reason: String| VmError::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path.join(MANIFEST))
            .map_err(|e| bad(format!("cannot read {MANIFEST}: {e}")))?;
        let manifest: SnapshotManifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("{MANIFEST} is malformed: {e}")))?;
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "snapshot format {} is not the {FORMAT} this nook reads: create it again",
                manifest.format
            )));
        }
        if manifest.agent_protocol != nook_proto::PROTOCOL_VERSION {
            return Err(bad(format!(
                "its agent speaks protocol {}, this nook {}: create it again",
                manifest.agent_protocol,
                nook_proto::PROTOCOL_VERSION
            )));
        }
        if !path.join(ENGINE_DIR).is_dir() {
            return Err(bad(format!("its {ENGINE_DIR}/ directory is missing")));
        }
        Ok(Snapshot {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            manifest,
            disk_usage: disk_usage(path),
        })
    }
}

pub(crate) fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += disk_usage(&e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// The directory of named snapshots.
pub fn snapshots_dir(home: &Path) -> PathBuf {
    home.join("snapshots")
}

/// The path of the named snapshot `name` (checked to be a plain name).
pub fn named_snapshot(home: &Path, name: &str) -> Result<PathBuf, VmError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(VmError::Config(
            "snapshot names use letters, digits, '-', '_' and '.', and do not start with '.'",
        ));
    }
    Ok(snapshots_dir(home).join(name))
}

/// A named snapshot as `nook snapshot ls` sees it: usable, or damaged
/// (still listed, removable and replaceable).
// Scans are few and short-lived (one per listed snapshot): boxing the
// usable one would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SnapshotScan {
    Usable(Snapshot),
    Damaged {
        name: String,
        path: PathBuf,
        /// Why it cannot be restored.
        reason: String,
    },
}

impl SnapshotScan {
    pub fn name(&self) -> &str {
        match self {
            SnapshotScan::Usable(s) => &s.name,
            SnapshotScan::Damaged { name, .. } => name,
        }
    }
}

/// Every named snapshot, usable or damaged, by name. Snapshots being made
/// or removed (hidden temporary names) are not listed.
pub fn scan_snapshots(home: &Path) -> Vec<SnapshotScan> {
    let mut out: Vec<SnapshotScan> = std::fs::read_dir(snapshots_dir(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| match Snapshot::open(&e.path()) {
            Ok(s) => SnapshotScan::Usable(s),
            Err(err) => SnapshotScan::Damaged {
                name: e.file_name().to_string_lossy().into_owned(),
                path: e.path(),
                reason: match err {
                    VmError::BadSnapshot { reason, .. } => reason,
                    other => crate::error::chain(&other),
                },
            },
        })
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

/// Every usable named snapshot (damaged ones are left out: see
/// [`scan_snapshots`]).
pub fn list_snapshots(home: &Path) -> Vec<Snapshot> {
    scan_snapshots(home)
        .into_iter()
        .filter_map(|s| match s {
            SnapshotScan::Usable(s) => Some(s),
            SnapshotScan::Damaged { .. } => None,
        })
        .collect()
}

/// A hidden name next to `path` for work in progress of this process
/// (`.NAME.KIND-PID-N`; `gc_leftovers` removes those of dead processes).
fn temp_sibling(path: &Path, kind: &str) -> PathBuf {
    // Unique per process and call: threads of one process may snapshot
    // into the same place at once (two starts making one template).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{kind}-{}-{seq}", std::process::id()))
}

/// Moves the finished snapshot `tmp` to `path` in one atomic step: a
/// rename that refuses to replace anything, or with `replace` an exchange
/// with what is there (whose remains, now under `tmp`, are then removed).
/// Readers, and a nook killed at any instant, see the old snapshot or the
/// new one whole, never neither. Two processes finishing at once: without
/// `replace` the second is refused ([`VmError::SnapshotExists`]); with it
/// both succeed and the later one's snapshot stays.
fn put_in_place(tmp: &Path, path: &Path, replace: bool) -> Result<(), VmError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let io = |e: rustix::io::Errno| VmError::SnapshotIo {
        path: path.to_path_buf(),
        source: e.into(),
    };
    // Another process may create or remove `path` between the attempts.
    for _ in 0..8 {
        match renameat_with(CWD, tmp, CWD, path, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) if replace => {}
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) => {
                return Err(VmError::SnapshotExists {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io(e)),
        }
        match renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(tmp);
                return Ok(());
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(rustix::io::Errno::BUSY))
}

/// Removes a snapshot directory and everything in it, damaged or not. It
/// is first renamed out of the way, so an interrupted removal leaves no
/// half-removed snapshot under its name.
pub fn remove_snapshot(path: &Path) -> Result<(), VmError> {
    if !path.is_dir() {
        return Err(VmError::BadSnapshot {
            path: path.to_path_buf(),
            reason: "there is no such snapshot".into(),
        });
    }
    let io = |source| VmError::SnapshotIo {
        path: path.to_path_buf(),
        source,
    };
    let old = temp_sibling(path, "old");
    std::fs::rename(path, &old).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn host_entropy() -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf
}

impl Vm {
    /// Snapshots this VM into the new directory `path` and lets it run on.
    /// No command may be running in it (the channel must be quiet).
    pub fn snapshot(&self, path: &Path) -> Result<Snapshot, VmError> {
        self.snapshot_with(path, &[], false)
    }

    /// [`Vm::snapshot`] into `path`, replacing what is there (a snapshot,
    /// damaged or not) only once the new one is complete.
    pub fn snapshot_replacing(&self, path: &Path) -> Result<Snapshot, VmError> {
        self.snapshot_with(path, &[], true)
    }

    /// [`Vm::snapshot`], with `extra` files (name, contents) written into
    /// the snapshot directory before it is renamed into place; `replace`
    /// swaps out what `path` holds at the end. The snapshot is made under a
    /// hidden temporary name, removed again on failure or when the VM's
    /// cancel flag is set by then ([`VmError::Cancelled`]).
    pub(crate) fn snapshot_with(
        &self,
        path: &Path,
        extra: &[(&str, Vec<u8>)],
        replace: bool,
    ) -> Result<Snapshot, VmError> {
        if path.exists() && !replace {
            return Err(VmError::SnapshotExists {
                path: path.to_path_buf(),
            });
        }
        let io = |source| VmError::SnapshotIo {
            path: path.to_path_buf(),
            source,
        };
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io)?;
        let tmp = temp_sibling(path, "partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io)?;
        let result = (|| {
            self.machine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot(&tmp.join(ENGINE_DIR))?;
            let hello = &self.conn.hello;
            let manifest = SnapshotManifest {
                format: FORMAT,
                engine: self.choice.id(),
                memory_mib: self.cfg.memory_mib,
                vcpus: self.cfg.vcpus,
                kernel_release: hello.kernel_release.clone(),
                agent_protocol: hello.protocol,
                agent_version: hello.agent_version.clone(),
                agent_features: hello.features.clone(),
                created: now_ns() / 1_000_000_000,
                net: self.cfg.net.clone(),
                shares: shared_paths(&self.cfg.shares),
                balloon: self.cfg.balloon,
                next_stream: self.conn.next_stream(),
            };
            let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            std::fs::write(tmp.join(MANIFEST), json).map_err(io)?;
            std::fs::File::open(tmp.join(MANIFEST))
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            for (name, bytes) in extra {
                std::fs::write(tmp.join(name), bytes).map_err(io)?;
            }
            if self
                .cfg
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(VmError::Cancelled);
            }
            put_in_place(&tmp, path, replace)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        Snapshot::open(path)
    }

    /// Starts a new VM from a snapshot. Its clock is set from the host and
    /// its entropy pool reseeded, so clones never share random bytes.
    pub fn restore(path: &Path, cfg: &VmConfig) -> Result<Vm, VmError> {
        Vm::restore_with(path, cfg, None)
    }

    /// [`Vm::restore`], on the kvm engine through `kvm` (a restorer of the
    /// same snapshot, with KVM VMs made ahead) when given.
    pub(crate) fn restore_with(
        path: &Path,
        cfg: &VmConfig,
        kvm: Option<&nook_vmm::KvmRestorer>,
    ) -> Result<Vm, VmError> {
        let t0 = Instant::now();
        let mut resolved = cfg.clone();
        resolved.resolve_shares()?;
        let cfg = &resolved;
        let snap = Snapshot::open(path)?;
        let m = &snap.manifest;
        check_restorable(path, cfg, m)?;
        let run_dir = make_run_dir()?;
        let engine_dir = path.join(ENGINE_DIR);
        // A clone gets its own back end (no flow of the parent's carries
        // over) and, below, its own MAC; the caller's network rules win
        // over the snapshot's.
        let net_cfg = match (&m.net, &cfg.net) {
            (None, Some(_)) => {
                return Err(VmError::BadSnapshot {
                    path: path.to_path_buf(),
                    reason: "it was taken without a network: create it again with --net".into(),
                })
            }
            (Some(recorded), mine) => Some(mine.clone().unwrap_or_else(|| recorded.clone())),
            (None, None) => None,
        };
        let net = net_cfg.as_ref().map(crate::net::start_clone).transpose()?;
        let nic = net.as_ref().map(|n| &n.nic);
        let shares = crate::share::fs_shares(&cfg.shares);
        let mut machine: Box<dyn Machine> = match (m.engine, kvm) {
            (EngineId::Kvm, Some(r)) => Box::new(crate::engine::kvm::restore_with(
                r, &run_dir.0, &shares, nic,
            )?),
            _ => m
                .engine
                .engine()
                .restore(&engine_dir, &run_dir.0, &shares, nic)?,
        };
        let choice = match m.engine {
            EngineId::Kvm => EngineChoice::Kvm {
                hardware_speed: crate::probe_kvm(&cfg.home).hardware_speed,
                reason: "restored from a kvm snapshot".into(),
            },
            EngineId::QemuKvm | EngineId::QemuTcg => EngineChoice::Qemu {
                kvm_accel: m.engine == EngineId::QemuKvm,
                reason: "restored from a qemu snapshot".into(),
            },
        };
        let Some(stream) = machine.take_channel() else {
            machine.kill();
            return Err(VmError::NoAgentChannel);
        };
        let hello = GuestHello {
            protocol: m.agent_protocol,
            agent_version: m.agent_version.clone(),
            kernel_release: m.kernel_release.clone(),
            features: m.agent_features.clone(),
        };
        let source = FrameSource::new(stream.try_clone().map_err(VmError::Channel)?);
        let conn = match Conn::resume(stream, hello, source, m.next_stream) {
            Ok(c) => c,
            Err(e) => {
                machine.kill();
                return Err(e);
            }
        };
        let resync = HostMsg::Resync(Resync {
            time_ns: now_ns(),
            entropy: host_entropy(),
            mac: net.as_ref().map(|n| n.nic.mac.to_string()),
        });
        if let Err(e) = conn.send(CONTROL_STREAM, &resync) {
            machine.kill();
            return Err(e);
        }
        let mut vm_cfg = cfg.clone();
        vm_cfg.memory_mib = m.memory_mib;
        vm_cfg.vcpus = m.vcpus;
        vm_cfg.net = net_cfg;
        vm_cfg.balloon = m.balloon;
        Ok(Vm {
            machine: crate::vm::share_machine(machine, &conn),
            conn,
            _run_dir: run_dir,
            choice,
            boot_time: t0.elapsed(),
            cfg: vm_cfg,
            _scratch: None,
            _locks: Vec::new(),
            origin: VmOrigin::Snapshot,
            net: net.map(|n| n.backend),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(shares: Vec<SharedPath>) -> SnapshotManifest {
        SnapshotManifest {
            format: FORMAT,
            engine: EngineId::QemuTcg,
            memory_mib: 256,
            vcpus: 1,
            kernel_release: String::new(),
            agent_protocol: nook_proto::PROTOCOL_VERSION,
            agent_version: String::new(),
            agent_features: Vec::new(),
            created: 0,
            net: None,
            shares,
            balloon: None,
            next_stream: 1,
        }
    }

    #[test]
    fn volumes_and_other_shares_are_refused_on_restore() {
        let path = Path::new("/snap");
        let mut cfg = VmConfig::default();
        assert!(check_restorable(path, &cfg, &manifest(vec![])).is_ok());
        cfg.volumes.push(crate::VolumeMount {
            disk: "/v.ext4".into(),
            guest_path: "/d".into(),
            read_only: false,
        });
        let e = check_restorable(path, &cfg, &manifest(vec![])).unwrap_err();
        assert!(e.to_string().contains("volumes"), "{e}");
        cfg.volumes.clear();
        cfg.shares.push("/tmp:/work".parse().unwrap());
        let e = check_restorable(path, &cfg, &manifest(vec![])).unwrap_err();
        assert!(e.to_string().contains("not at [/work]"), "{e}");
        let recorded = vec![SharedPath {
            guest_path: "/work".into(),
            read_only: false,
        }];
        assert!(check_restorable(path, &cfg, &manifest(recorded)).is_ok());
    }
}
