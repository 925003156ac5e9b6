//! What a QEMU microVM is made of, validated once before anything is spawned.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::QemuError;

/// The environment variable that names the QEMU binary to use instead of the
/// one found on `PATH`.
pub const QEMU_ENV: &str = "NOOK_QEMU";

/// The QEMU system emulator nook drives.
pub const QEMU_BINARY_NAME: &str = "qemu-system-x86_64";

/// The name of the guest's virtio-serial port that carries the agent protocol.
/// In the guest it appears as `/sys/class/virtio-ports/vportNpM/name`.
pub const AGENT_PORT_NAME: &str = "nook.agent";

/// How QEMU executes guest code. The caller picks it (nook probes whether KVM
/// runs guest kernels at speed); this crate only turns it into flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm` (`-cpu host`).
    Kvm,
    /// QEMU's binary translator (`-cpu max`): works everywhere, slower.
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel` flag.
    pub fn as_qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Host page cache policy of a disk, QEMU's `cache=` drive option (also
/// its spelling in snapshot manifests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    /// Host page cache, guest flushes honoured (QEMU's default).
    #[default]
    Writeback,
    /// `O_DIRECT`: no host page cache. Fails on file systems without
    /// `O_DIRECT` support such as tmpfs.
    #[serde(rename = "none")]
    Direct,
    /// Host page cache, guest flushes ignored: for scratch disks whose
    /// contents do not matter after a host crash.
    Unsafe,
}

impl DiskCache {
    pub(crate) fn as_qemu_arg(self) -> &'static str {
        match self {
            DiskCache::Writeback => "writeback",
            DiskCache::Direct => "none",
            DiskCache::Unsafe => "unsafe",
        }
    }
}

/// Where guest RAM lives, which decides how snapshots store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestRam {
    /// Private anonymous memory (QEMU's default). A snapshot carries the RAM
    /// inside its migration stream, and a restore reads it all back in.
    #[default]
    Anonymous,
    /// A file, `RUN_DIR/guest.ram` ([`GUEST_RAM_FILE`]), mapped shared. A
    /// snapshot copies it (sparsely) next to the device state, and restored
    /// clones map that copy copy-on-write instead of loading it: restore
    /// cost no longer grows with guest memory. Put the run directory on
    /// tmpfs, or the guest's memory writes become disk writeback.
    SharedFile,
}

/// File name of the guest RAM file in the run directory
/// ([`GuestRam::SharedFile`]).
pub const GUEST_RAM_FILE: &str = "guest.ram";

/// A raw disk image attached as a `virtio-blk-device` on virtio-mmio.
/// Disks appear in the guest in the order they are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDiskConfig {
    /// Path of the raw image file on the host.
    pub path: PathBuf,
    /// Attach read-only (QEMU opens the file read-only too).
    pub read_only: bool,
    /// Host caching policy.
    pub cache: DiskCache,
    /// Serial number the guest reads from `/sys/block/vdX/serial` (at most
    /// 20 bytes, QEMU's limit; letters, digits, `-`, `_`, `.`): lets the
    /// guest find a disk by name instead of by order.
    pub serial: Option<String>,
}

impl QemuDiskConfig {
    /// A raw disk with the default cache policy.
    pub fn new(path: impl Into<PathBuf>, read_only: bool) -> Self {
        QemuDiskConfig {
            path: path.into(),
            read_only,
            cache: DiskCache::default(),
            serial: None,
        }
    }
}

/// A host directory share: a `vhost-user-fs-device` whose backend (nook's
/// virtio-fs server) listens on `socket` before QEMU starts. A VM with
/// shares gets its RAM from a shared memfd (or its shared RAM file) so the
/// backend can map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuShareConfig {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`): 1 to 36
    /// letters, digits, `-`, `_` or `.`.
    pub tag: String,
}

/// A `virtio-balloon-device`: guest memory the host can ask back
/// ([`crate::QemuVm::set_balloon`]). QEMU gives the pages the guest puts in
/// the balloon back to the host: `madvise(MADV_DONTNEED)` for anonymous RAM,
/// a hole punched (`fallocate`) in a RAM file or memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QemuBalloonConfig {
    /// Let the guest report the free pages it has (`free-page-reporting=on`,
    /// `VIRTIO_BALLOON_F_REPORTING`): QEMU discards them as they come, with
    /// no balloon target set. Linux reports free blocks of 2 MiB or more
    /// about two seconds after they are freed.
    pub free_page_reporting: bool,
    /// Seconds between the guest's memory statistics updates
    /// (`guest-stats-polling-interval`); 0 asks for none.
    pub stats_interval_s: u32,
}

/// The QOM id of the balloon device.
pub(crate) const BALLOON_ID: &str = "balloon0";

/// A `virtio-net-device` whose back end is a Unix stream of Ethernet
/// frames, each preceded by its 32-bit big-endian length (`-netdev
/// socket,fd=N` on a connected stream socket: the framing of nook's
/// network back end, up from the first instruction; `-netdev stream` over
/// a descriptor connects asynchronously in QEMU 7.2). The stream itself is
/// handed to [`crate::QemuVm::start_with_net`] (or
/// [`crate::RestoreOptions::net`]); QEMU inherits it as a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuNicConfig {
    /// The NIC's MAC address, `02:..` form.
    pub mac: String,
}

/// Everything needed to start one QEMU `microvm` guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The `qemu-system-x86_64` binary; see [`locate_qemu`].
    pub binary: PathBuf,
    /// Accelerator chosen by the caller.
    pub accel: Accel,
    /// Guest kernel (bzImage or PVH ELF).
    pub kernel: PathBuf,
    /// Optional initramfs (newc cpio, optionally compressed).
    pub initrd: Option<PathBuf>,
    /// Kernel command line. The serial console is the guest's `ttyS0`.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Per-VM directory, created and removed by the caller. The engine
    /// creates the console log and QEMU's stderr log in it.
    pub run_dir: PathBuf,
    /// Raw disks, attached in order.
    pub disks: Vec<QemuDiskConfig>,
    /// Attach a `virtio-rng-device` so the guest has entropy early.
    pub rng: bool,
    /// Run QEMU under its seccomp sandbox (`-sandbox on,...`): no spawning,
    /// no privilege changes, no obsolete syscalls.
    pub sandbox: bool,
    /// Under TCG, append `tsc_early_khz=<host TSC kHz>` to the kernel command
    /// line (unless it already sets it). Without it the guest's TSC
    /// calibration against the emulated PIT fails now and then on a busy
    /// host, and the kernel then hangs early in boot (measured: 4 hangs in 6
    /// boots of Debian's cloud kernel; none in 30 with the hint).
    pub tsc_hint: bool,
    /// File where the host TSC frequency for [`tsc_hint`](Self::tsc_hint)
    /// is kept per host boot (keyed by the kernel's `boot_id`), so that
    /// only the first process after a boot measures it (about 10 ms);
    /// `None`: measured once per process.
    pub tsc_cache: Option<PathBuf>,
    /// CPU model override; `None` means `host` under KVM and `max` under TCG.
    pub cpu_model: Option<String>,
    /// Extra arguments appended verbatim to QEMU's command line.
    pub extra_args: Vec<String>,
    /// Where guest RAM lives; [`GuestRam::SharedFile`] for VMs that will be
    /// snapshotted to make clones.
    pub ram: GuestRam,
    /// Host directory shares, as virtio-fs devices.
    pub shares: Vec<QemuShareConfig>,
    /// A network card; none (the guest has only `lo`) when `None`.
    pub nic: Option<QemuNicConfig>,
    /// A memory balloon; none when `None`.
    pub balloon: Option<QemuBalloonConfig>,
}

impl QemuConfig {
    /// A config with nook's defaults: 256 MiB, 1 vCPU, serial console on
    /// `ttyS0`, entropy device and seccomp sandbox on, no disks.
    pub fn new(
        binary: impl Into<PathBuf>,
        accel: Accel,
        kernel: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        QemuConfig {
            binary: binary.into(),
            accel,
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=ttyS0 panic=-1".to_owned(),
            memory_mib: 256,
            vcpus: 1,
            run_dir: run_dir.into(),
            disks: Vec::new(),
            rng: true,
            sandbox: true,
            tsc_hint: true,
            tsc_cache: None,
            cpu_model: None,
            extra_args: Vec::new(),
            ram: GuestRam::Anonymous,
            shares: Vec::new(),
            nic: None,
            balloon: None,
        }
    }

    /// Checks everything that can be checked before spawning, so that a
    /// mistake is reported with the path at fault instead of as QEMU's
    /// stderr.
    pub fn validate(&self) -> Result<(), QemuError> {
        if self.memory_mib < 16 {
            return Err(QemuError::InvalidConfig {
                field: "memory_mib",
                reason: "must be at least 16 MiB",
            });
        }
        if self.vcpus == 0 {
            return Err(QemuError::InvalidConfig {
                field: "vcpus",
                reason: "must be at least 1",
            });
        }
        if self.cmdline.contains('\n') || self.cmdline.contains('\0') {
            return Err(QemuError::InvalidConfig {
                field: "cmdline",
                reason: "must not contain newlines or NUL bytes",
            });
        }
        check_file(&self.binary, |path, source| QemuError::BinaryUnusable {
            path,
            source,
        })?;
        check_file(&self.kernel, |path, source| QemuError::KernelUnreadable {
            path,
            source,
        })?;
        if let Some(initrd) = &self.initrd {
            check_file(initrd, |path, source| QemuError::InitrdUnreadable {
                path,
                source,
            })?;
        }
        for disk in &self.disks {
            if let Some(serial) = &disk.serial {
                let ok = serial.len() <= 20
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(QemuError::InvalidConfig {
                        field: "disks.serial",
                        reason: "must be at most 20 letters, digits, `-`, `_` or `.`",
                    });
                }
            }
            check_file(&disk.path, |path, source| QemuError::DiskUnreadable {
                path,
                source,
            })?;
        }
        for share in &self.shares {
            let ok = !share.tag.is_empty()
                && share.tag.len() <= 36
                && share
                    .tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(QemuError::InvalidConfig {
                    field: "shares.tag",
                    reason: "must be 1 to 36 letters, digits, `-`, `_` or `.`",
                });
            }
        }
        if let Some(nic) = &self.nic {
            let ok = nic.mac.len() == 17
                && nic
                    .mac
                    .split(':')
                    .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(QemuError::InvalidConfig {
                    field: "nic.mac",
                    reason: "must be six hex bytes like 02:00:00:00:00:01",
                });
            }
        }
        match std::fs::metadata(&self.run_dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(QemuError::RunDirUnusable {
                path: self.run_dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            }),
            Err(source) => Err(QemuError::RunDirUnusable {
                path: self.run_dir.clone(),
                source,
            }),
        }
    }

    /// The `-drive`/`-device` pairs for the configured disks.
    pub(crate) fn disk_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let mut drive = OsString::from("if=none,id=disk");
            drive.push(i.to_string());
            drive.push(",format=raw,file=");
            drive.push(escape_opt_value(disk.path.as_os_str()));
            drive.push(if disk.read_only {
                ",readonly=on"
            } else {
                ",readonly=off"
            });
            drive.push(",cache=");
            drive.push(disk.cache.as_qemu_arg());
            args.push("-drive".into());
            args.push(drive);
            // A host write or read error (a full disk) is reported to the
            // guest as an I/O error; QEMU's default stops the VM on ENOSPC,
            // which would hang the guest until a timeout.
            let mut device = format!("virtio-blk-device,drive=disk{i},werror=report,rerror=report");
            if let Some(serial) = &disk.serial {
                device.push_str(",serial=");
                device.push_str(serial);
            }
            args.push("-device".into());
            args.push(device.into());
        }
        args
    }
}

impl QemuConfig {
    /// The `-netdev`/`-device` pair of the NIC, its back end on `fd`.
    pub(crate) fn nic_args(&self, fd: Option<std::os::fd::RawFd>) -> Vec<OsString> {
        match (&self.nic, fd) {
            (Some(nic), Some(fd)) => vec![
                "-netdev".into(),
                format!("socket,id=net0,fd={fd}").into(),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", nic.mac).into(),
            ],
            _ => Vec::new(),
        }
    }

    /// The `-device` of the balloon, if there is one.
    pub(crate) fn balloon_args(&self) -> Vec<OsString> {
        match &self.balloon {
            Some(b) => vec![
                "-device".into(),
                format!(
                    "virtio-balloon-device,id={BALLOON_ID},free-page-reporting={},guest-stats-polling-interval={}",
                    if b.free_page_reporting { "on" } else { "off" },
                    b.stats_interval_s
                )
                .into(),
            ],
            None => Vec::new(),
        }
    }

    /// The `-chardev`/`-device` pairs for the configured shares.
    pub(crate) fn share_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (i, share) in self.shares.iter().enumerate() {
            let mut chardev = OsString::from(format!("socket,id=fs{i},path="));
            chardev.push(escape_opt_value(share.socket.as_os_str()));
            args.push("-chardev".into());
            args.push(chardev);
            args.push("-device".into());
            args.push(format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag).into());
        }
        args
    }
}

/// Finds the QEMU binary: `$NOOK_QEMU` if set, else `qemu-system-x86_64` on
/// `PATH`.
pub fn locate_qemu() -> Result<PathBuf, QemuError> {
    if let Some(explicit) = std::env::var_os(QEMU_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU_BINARY_NAME))
        .find(|candidate| candidate.is_file())
        .ok_or(QemuError::BinaryNotFound)
}

fn check_file(
    path: &Path,
    err: impl FnOnce(PathBuf, std::io::Error) -> QemuError,
) -> Result<(), QemuError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(err(
            path.to_owned(),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )),
        Err(source) => Err(err(path.to_owned(), source)),
    }
}

/// Escapes a value for QEMU's `key=value,key=value` option syntax, where a
/// literal comma is written as two.
pub(crate) fn escape_opt_value(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nook-qemu-config-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn escape_doubles_commas_only() {
        assert_eq!(
            escape_opt_value(std::ffi::OsStr::new("/a,b/c,,d")),
            OsString::from("/a,,b/c,,,,d")
        );
        assert_eq!(
            escape_opt_value(std::ffi::OsStr::new("/plain")),
            OsString::from("/plain")
        );
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let dir = scratch();
        let bin = dir.join("qemu");
        std::fs::write(&bin, b"").unwrap();
        let cfg = QemuConfig::new(&bin, Accel::Tcg, dir.join("no-such-kernel"), &dir);
        let err = cfg.validate().unwrap_err();
        assert!(matches!(err, QemuError::KernelUnreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-kernel"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validate_checks_initrd_disks_run_dir_and_sizes() {
        let dir = scratch();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let good = QemuConfig::new(&file, Accel::Tcg, &file, &dir);
        good.validate().unwrap();

        let mut cfg = good.clone();
        cfg.initrd = Some(dir.join("no-initrd"));
        assert!(matches!(
            cfg.validate(),
            Err(QemuError::InitrdUnreadable { .. })
        ));

        let mut cfg = good.clone();
        cfg.disks
            .push(QemuDiskConfig::new(dir.join("no-disk"), true));
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("no-disk"), "{err}");

        let mut cfg = good.clone();
        let mut disk = QemuDiskConfig::new(&file, true);
        disk.serial = Some("a,b".into());
        cfg.disks.push(disk);
        assert!(matches!(
            cfg.validate(),
            Err(QemuError::InvalidConfig {
                field: "disks.serial",
                ..
            })
        ));

        let mut cfg = good.clone();
        cfg.run_dir = file.clone();
        assert!(matches!(
            cfg.validate(),
            Err(QemuError::RunDirUnusable { .. })
        ));

        let mut cfg = good.clone();
        cfg.vcpus = 0;
        assert!(matches!(
            cfg.validate(),
            Err(QemuError::InvalidConfig { field: "vcpus", .. })
        ));

        let mut cfg = good.clone();
        cfg.binary = dir.clone();
        assert!(matches!(
            cfg.validate(),
            Err(QemuError::BinaryUnusable { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disks_become_drive_and_device_pairs() {
        let mut cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        cfg.disks.push(QemuDiskConfig::new("/img/root,1.raw", true));
        let mut scratch = QemuDiskConfig::new("/img/scratch.raw", false);
        scratch.cache = DiskCache::Unsafe;
        scratch.serial = Some("nook-scratch".into());
        cfg.disks.push(scratch);
        let args: Vec<String> = cfg
            .disk_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-drive",
                "if=none,id=disk0,format=raw,file=/img/root,,1.raw,readonly=on,cache=writeback",
                "-device",
                "virtio-blk-device,drive=disk0,werror=report,rerror=report",
                "-drive",
                "if=none,id=disk1,format=raw,file=/img/scratch.raw,readonly=off,cache=unsafe",
                "-device",
                "virtio-blk-device,drive=disk1,werror=report,rerror=report,serial=nook-scratch",
            ]
        );
    }
}
