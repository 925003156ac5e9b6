//! `manifest.json`: what a snapshot records about the VM it was taken
//! from, and how a restore turns that record back into a QEMU invocation.
//!
//! The manifest is data, not a command line. The device model (kernel,
//! memory, vCPUs, disks, ...) comes from it, because the migration stream
//! only loads into the same model. How QEMU is *started* (which binary,
//! extra arguments, the seccomp sandbox) comes from the restoring side's
//! own [`QemuRestoreConfig`]; the manifest's record of those must match it
//! exactly, or the restore is refused before anything runs
//! ([`QemuSnapshotError::Untrusted`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{
    QemuRestoreConfig, QemuSnapshotInfo, SnapshotMemory, FORMAT, FORMAT_VERSION, MANIFEST_FILE,
};
use crate::config::{Accel, DiskCache, GuestRam, QemuConfig, QemuDiskConfig};
use crate::error::QemuSnapshotError;

/// The file as stored. Field names are the on-disk format (version 1).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u64,
    #[serde(default)]
    created_unix_ms: u64,
    qemu_version: String,
    memory: SnapshotMemory,
    memory_data_bytes: u64,
    state_bytes: u64,
    state_crc32: u32,
    config: RecordedConfig,
}

/// Just enough of a manifest to tell whether this code can read the rest.
#[derive(Debug, Deserialize)]
struct Header {
    format: String,
    version: u64,
}

/// The VM's configuration as recorded; `run_dir`, `ram` and `shares` are
/// the restoring side's.
#[derive(Debug, Serialize, Deserialize)]
struct RecordedConfig {
    binary: String,
    accel: Accel,
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    /// Snapshots taken before the rename spell it `mem_mib`.
    #[serde(alias = "mem_mib")]
    memory_mib: u32,
    vcpus: u8,
    disks: Vec<RecordedDisk>,
    rng: bool,
    sandbox: bool,
    cpu_model: Option<String>,
    extra_args: Vec<String>,
    /// The NIC, if the VM had one (its back end stream is the restoring
    /// side's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nic: Option<RecordedNic>,
    /// The balloon device, if the VM had one (part of the device model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    balloon: Option<RecordedBalloon>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordedBalloon {
    free_page_reporting: bool,
    stats_interval_s: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordedNic {
    mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordedDisk {
    path: String,
    read_only: bool,
    cache: DiskCache,
    serial: Option<String>,
}

fn utf8(path: &Path) -> Result<String, QemuSnapshotError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| QemuSnapshotError::NonUtf8Path {
            path: path.to_owned(),
        })
}

impl RecordedConfig {
    fn new(cfg: &QemuConfig) -> Result<RecordedConfig, QemuSnapshotError> {
        let disks = cfg
            .disks
            .iter()
            .map(|d| {
                Ok(RecordedDisk {
                    path: utf8(&d.path)?,
                    read_only: d.read_only,
                    cache: d.cache,
                    serial: d.serial.clone(),
                })
            })
            .collect::<Result<_, QemuSnapshotError>>()?;
        Ok(RecordedConfig {
            binary: utf8(&cfg.binary)?,
            accel: cfg.accel,
            kernel: utf8(&cfg.kernel)?,
            initrd: cfg.initrd.as_deref().map(utf8).transpose()?,
            cmdline: cfg.cmdline.clone(),
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            disks,
            rng: cfg.rng,
            sandbox: cfg.sandbox,
            cpu_model: cfg.cpu_model.clone(),
            extra_args: cfg.extra_args.clone(),
            nic: cfg.nic.as_ref().map(|n| RecordedNic { mac: n.mac.clone() }),
            balloon: cfg.balloon.map(|b| RecordedBalloon {
                free_page_reporting: b.free_page_reporting,
                stats_interval_s: b.stats_interval_s,
            }),
        })
    }

    fn into_config(self) -> QemuConfig {
        let mut cfg = QemuConfig::new(self.binary, self.accel, self.kernel, PathBuf::new());
        cfg.initrd = self.initrd.map(PathBuf::from);
        cfg.cmdline = self.cmdline;
        // The recorded command line already carries the TSC hint.
        cfg.tsc_hint = false;
        cfg.memory_mib = self.memory_mib;
        cfg.vcpus = self.vcpus;
        cfg.rng = self.rng;
        cfg.sandbox = self.sandbox;
        cfg.cpu_model = self.cpu_model;
        cfg.extra_args = self.extra_args;
        cfg.nic = self
            .nic
            .map(|n| crate::config::QemuNicConfig { mac: n.mac });
        cfg.balloon = self.balloon.map(|b| crate::config::QemuBalloonConfig {
            free_page_reporting: b.free_page_reporting,
            stats_interval_s: b.stats_interval_s,
        });
        cfg.disks = self
            .disks
            .into_iter()
            .map(|d| QemuDiskConfig {
                path: d.path.into(),
                read_only: d.read_only,
                cache: d.cache,
                serial: d.serial,
            })
            .collect();
        cfg.ram = GuestRam::Anonymous;
        cfg
    }
}

/// The manifest bytes for `info` (pretty JSON, newline-terminated). Fails
/// on paths that JSON cannot hold, before the guest is touched.
pub(super) fn encode(info: &QemuSnapshotInfo) -> Result<Vec<u8>, QemuSnapshotError> {
    let created_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        version: FORMAT_VERSION,
        created_unix_ms,
        qemu_version: info.qemu_version.clone(),
        memory: info.memory,
        memory_data_bytes: info.memory_data_bytes,
        state_bytes: info.state_bytes,
        state_crc32: info.state_crc32,
        config: RecordedConfig::new(&info.config)?,
    };
    // Plain structs of strings, numbers and vectors always serialize.
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    Ok(bytes)
}

/// Checks that `config` can be recorded (every path is UTF-8).
pub(super) fn check_recordable(config: &QemuConfig) -> Result<(), QemuSnapshotError> {
    RecordedConfig::new(config).map(drop)
}

/// Reads the manifest of the snapshot in `dir`.
pub(super) fn read(dir: &Path) -> Result<QemuSnapshotInfo, QemuSnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QemuSnapshotError::ManifestMissing { path })
        }
        Err(source) => return Err(nook_fsutil::IoError::new("read", path, source).into()),
    };
    let invalid = |path: PathBuf| {
        move |source: serde_json::Error| match source.classify() {
            serde_json::error::Category::Data => {
                QemuSnapshotError::ManifestInvalid { path, source }
            }
            _ => QemuSnapshotError::ManifestSyntax { path, source },
        }
    };
    let header: Header = serde_json::from_slice(&text).map_err(invalid(path.clone()))?;
    if header.format != FORMAT || header.version != FORMAT_VERSION {
        return Err(QemuSnapshotError::UnsupportedFormat {
            format: header.format,
            version: header.version,
        });
    }
    let m: Manifest = serde_json::from_slice(&text).map_err(invalid(path))?;
    Ok(QemuSnapshotInfo {
        dir: dir.to_owned(),
        config: m.config.into_config(),
        memory: m.memory,
        qemu_version: m.qemu_version,
        state_bytes: m.state_bytes,
        memory_data_bytes: m.memory_data_bytes,
        state_crc32: m.state_crc32,
        timings: None,
    })
}

/// The configuration a restore starts QEMU with: the recorded device
/// model, the restoring side's invocation (`binary`, sandbox, extra
/// arguments) and disks, and `run_dir`. The recorded invocation must be the
/// one this side uses.
pub(super) fn restore_config(
    recorded: &QemuConfig,
    binary: PathBuf,
    run_dir: &Path,
    options: &QemuRestoreConfig,
) -> Result<QemuConfig, QemuSnapshotError> {
    let untrusted = |field, recorded: String, expected: String| {
        Err(QemuSnapshotError::Untrusted {
            field,
            recorded,
            expected,
        })
    };
    if recorded.binary != binary {
        let show = |p: &Path| p.display().to_string();
        return untrusted("binary", show(&recorded.binary), show(&binary));
    }
    if recorded.sandbox != options.sandbox {
        let show = |on: bool| if on { "on" } else { "off" }.to_owned();
        return untrusted("sandbox", show(recorded.sandbox), show(options.sandbox));
    }
    if recorded.extra_args != options.extra_args {
        let show = |a: &[String]| {
            if a.is_empty() {
                "(none)".to_owned()
            } else {
                a.join(" ")
            }
        };
        return untrusted(
            "extra_args",
            show(&recorded.extra_args),
            show(&options.extra_args),
        );
    }
    let mut cfg = recorded.clone();
    if let Some(disks) = &options.disks {
        check_disk_overrides(&recorded.disks, disks)?;
        cfg.disks = disks.clone();
    }
    cfg.binary = binary;
    cfg.run_dir = run_dir.to_owned();
    Ok(cfg)
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

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
        let mut disk = QemuDiskConfig::new("/d/scratch.raw", false);
        disk.cache = DiskCache::Unsafe;
        cfg.disks = vec![QemuDiskConfig::new("/d/root.raw", true), disk];
        cfg
    }

    fn sample_info(dir: &Path) -> QemuSnapshotInfo {
        QemuSnapshotInfo {
            dir: dir.to_owned(),
            config: sample_config(),
            memory: SnapshotMemory::File,
            qemu_version: "7.2.22".into(),
            state_bytes: 58_810,
            memory_data_bytes: 90 << 20,
            state_crc32: 0xdead_beef,
            timings: None,
        }
    }

    fn write_value(dir: &Path, value: &Value) {
        std::fs::write(dir.join(MANIFEST_FILE), value.to_string()).unwrap();
    }

    fn good_value(dir: &Path) -> Value {
        serde_json::from_slice(&encode(&sample_info(dir)).unwrap()).unwrap()
    }

    #[test]
    fn manifest_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let info = sample_info(dir.path());
        std::fs::write(dir.path().join(MANIFEST_FILE), encode(&info).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), info);
        // The balloon is part of the device model, recorded when present.
        let mut info = info;
        info.config.balloon = Some(crate::config::QemuBalloonConfig {
            free_page_reporting: true,
            stats_interval_s: 2,
        });
        let bytes = encode(&info).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["config"]["balloon"]["free_page_reporting"], true);
        std::fs::write(dir.path().join(MANIFEST_FILE), bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), info);
    }

    #[test]
    fn the_on_disk_names_are_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let v = good_value(dir.path());
        assert_eq!(v["format"], "nook-qemu-snapshot");
        assert_eq!(v["version"], 1);
        assert_eq!(v["memory"], "file");
        assert_eq!(v["config"]["accel"], "tcg");
        assert_eq!(v["config"]["memory_mib"], 512);
        assert_eq!(v["config"]["disks"][1]["cache"], "unsafe");
        assert_eq!(v["config"]["disks"][0]["cache"], "writeback");
        assert_eq!(v["config"]["initrd"], "/k/initrd,x");
        assert_eq!(v["config"]["sandbox"], true);
        // Manifests written before the rename say `mem_mib`.
        let mut old = v.clone();
        let config = old["config"].as_object_mut().unwrap();
        let mib = config.remove("memory_mib").unwrap();
        config.insert("mem_mib".into(), mib);
        write_value(dir.path(), &old);
        assert_eq!(read(dir.path()).unwrap().config.memory_mib, 512);
    }

    #[test]
    fn damaged_manifests_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(
            matches!(err, QemuSnapshotError::ManifestMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("take the snapshot again"), "{err}");

        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, b"{\"format\": ").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(QemuSnapshotError::ManifestSyntax { .. })
        ));

        let good = good_value(dir.path());
        let mut bad = good.clone();
        bad["version"] = json!(99);
        write_value(dir.path(), &bad);
        assert!(matches!(
            read(dir.path()),
            Err(QemuSnapshotError::UnsupportedFormat { version: 99, .. })
        ));
        for (field, value, says) in [
            ("vcpus", json!(1000), "`1000`, expected u8"),
            ("accel", json!("hvf"), "unknown variant `hvf`"),
            ("extra_args", json!("-S"), "expected a sequence"),
        ] {
            let mut bad = good.clone();
            bad["config"][field] = value;
            write_value(dir.path(), &bad);
            match read(dir.path()) {
                Err(QemuSnapshotError::ManifestInvalid { source, .. }) => {
                    let why = source.to_string();
                    assert!(why.contains(says), "{field}: {why}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut bad = good.clone();
        bad["config"].as_object_mut().unwrap().remove("vcpus");
        write_value(dir.path(), &bad);
        let err = read(dir.path()).unwrap_err();
        let why = std::error::Error::source(&err).unwrap().to_string();
        assert!(why.contains("missing field `vcpus`"), "{why}");
        let mut bad = good;
        bad["config"]["disks"][1]["cache"] = json!("sometimes");
        write_value(dir.path(), &bad);
        let err = read(dir.path()).unwrap_err();
        let why = std::error::Error::source(&err).unwrap().to_string();
        assert!(why.contains("sometimes"), "{why}");
    }

    #[test]
    fn non_utf8_paths_cannot_be_recorded() {
        use std::os::unix::ffi::OsStrExt;
        let mut cfg = sample_config();
        cfg.kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k/\xff"));
        assert!(matches!(
            check_recordable(&cfg),
            Err(QemuSnapshotError::NonUtf8Path { .. })
        ));
        check_recordable(&sample_config()).unwrap();
    }

    #[test]
    fn restore_runs_qemu_as_this_side_says_and_refuses_a_manifest_that_disagrees() {
        let recorded = sample_config();
        let options = QemuRestoreConfig::default();
        let qemu = PathBuf::from("/usr/bin/qemu");
        let cfg = restore_config(&recorded, qemu.clone(), Path::new("/run/x"), &options).unwrap();
        assert_eq!(cfg.run_dir, Path::new("/run/x"));
        assert!(cfg.sandbox & cfg.extra_args.is_empty());
        assert_eq!(cfg.disks, recorded.disks);

        let refused = |recorded: &QemuConfig, options: &QemuRestoreConfig| match restore_config(
            recorded,
            qemu.clone(),
            Path::new("/r"),
            options,
        ) {
            Err(QemuSnapshotError::Untrusted { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        let mut other_binary = recorded.clone();
        other_binary.binary = "/tmp/evil".into();
        assert_eq!(refused(&other_binary, &options), "binary");
        let mut no_sandbox = recorded.clone();
        no_sandbox.sandbox = false;
        assert_eq!(refused(&no_sandbox, &options), "sandbox");
        let mut extra = recorded.clone();
        extra.extra_args = vec!["-device".into(), "evil".into()];
        assert_eq!(refused(&extra, &options), "extra_args");
        let err = restore_config(&extra, qemu.clone(), Path::new("/r"), &options).unwrap_err();
        assert!(err.to_string().contains("-device evil"), "{err}");

        // The restoring side may run without the sandbox or with extra
        // arguments when it says so itself, and the manifest agrees.
        let own = QemuRestoreConfig {
            sandbox: false,
            extra_args: extra.extra_args.clone(),
            ..QemuRestoreConfig::default()
        };
        let mut agreed = extra.clone();
        agreed.sandbox = false;
        let cfg = restore_config(&agreed, qemu.clone(), Path::new("/r"), &own).unwrap();
        assert!(!cfg.sandbox);
        assert_eq!(refused(&recorded, &own), "sandbox");
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
}
