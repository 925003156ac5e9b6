//! What QEMU may reach on the host: the paths of its Landlock domain,
//! derived from the launch configuration (no globs, nothing of the user's
//! home or `$NOOK_HOME` beyond this VM's own files).
//!
//! Measured with `strace -f -e trace=%file` on `nook run --engine qemu`
//! (QEMU 7.2, Debian 12): cold boots with an image, a scratch disk, a
//! volume, a share, a balloon and `--net`, and restores of a template.
//! Besides the VM's own files QEMU opens its shared libraries and modules
//! (`/usr/lib`, through `/lib`), its firmware (`/usr/share/qemu`),
//! `/etc/ld.so.cache` and `/etc/localtime`, `/dev/null` (read-write) and
//! `/dev/urandom` (read), `/dev/kvm` under KVM, and reads a few `/sys` files
//! (possible and online CPUs, NUMA nodes, NVDIMM buses). It also opens
//! `/proc/self/status` and `/proc/filesystems`: not granted, since a rule
//! for `/proc/self` would name nook's own process, and QEMU runs the same
//! without them. Connecting to the vhost-user sockets of shares, and the
//! socket pairs and state file it inherits, are not governed by Landlock.

use std::path::Path;

use nook_seccomp::FsReach;

use crate::cmdline::{Launch, RamBacking};
use crate::config::{Accel, QemuConfig};

/// Read and execute: QEMU's binary, libraries, modules and firmware.
/// `/lib*`, `/bin` and `/sbin` are symlinks into `/usr` on merged-`/usr`
/// systems (the rule then lands on the target) and directories of their
/// own elsewhere.
const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin"];

/// Read only: the configuration files of `/etc` that QEMU and the
/// libraries it links read at start (missing ones are left out), instead
/// of all of `/etc`.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/localtime",
    "/etc/gnutls",
    "/etc/libnl",
    "/etc/selinux/config",
];

/// Read only: host facts QEMU reads (CPU and NUMA topology, NVDIMM buses).
const SYS_DIRS: &[&str] = &[
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/sys/bus/nd/devices",
];

/// Read only: the entropy device (QEMU's crypto start-up).
const RANDOM_DEVICE: &str = "/dev/urandom";

/// Read and write: the null device (opened `O_RDWR` at start).
const NULL_DEVICE: &str = "/dev/null";

/// The KVM device, opened under `-accel kvm` (read, write and ioctl).
const KVM_DEVICE: &str = "/dev/kvm";

/// Every path QEMU may reach for `cfg` launched as `launch`: the system
/// files above, the binary, kernel and initramfs (read), the disks (read,
/// or read-write unless read-only), the run directory (read-write: console
/// log, stderr, guest RAM file, share sockets) and a RAM file elsewhere,
/// such as a snapshot's `memory` (read-write: QEMU 7.2 opens a
/// `memory-backend-file` with `O_RDWR` even for a private mapping).
pub(crate) fn qemu_reach(cfg: &QemuConfig, launch: &Launch) -> Vec<FsReach> {
    let read = |path: &Path| FsReach {
        path: path.to_owned(),
        write: false,
    };
    let write = |path: &Path| FsReach {
        path: path.to_owned(),
        write: true,
    };
    let mut reach: Vec<FsReach> = [SYSTEM_DIRS, ETC_FILES, SYS_DIRS, &[RANDOM_DEVICE]]
        .concat()
        .into_iter()
        .map(|p| read(Path::new(p)))
        .collect();
    reach.push(write(Path::new(NULL_DEVICE)));
    if cfg.accel == Accel::Kvm {
        reach.push(write(Path::new(KVM_DEVICE)));
    }
    reach.push(read(&cfg.binary));
    reach.push(read(&cfg.kernel));
    reach.extend(cfg.initrd.as_deref().map(read));
    for disk in &cfg.disks {
        reach.push(if disk.read_only {
            read(&disk.path)
        } else {
            write(&disk.path)
        });
    }
    reach.push(write(&cfg.run_dir));
    if let RamBacking::File { path, .. } = &launch.ram {
        reach.push(write(path));
    }
    reach.sort();
    reach.dedup();
    reach
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QemuDiskConfig;

    fn find<'a>(reach: &'a [FsReach], path: &str) -> Option<&'a FsReach> {
        reach.iter().find(|r| r.path == Path::new(path))
    }

    #[test]
    fn the_vm_files_are_reachable_with_the_rights_they_need_and_nothing_else_of_the_user() {
        let mut cfg = QemuConfig::new("/usr/bin/qemu", Accel::Tcg, "/h/k/vmlinuz", "/run/vm1");
        cfg.initrd = Some("/h/k/initrd".into());
        cfg.disks
            .push(QemuDiskConfig::new("/h/images/root.ext4", true));
        cfg.disks
            .push(QemuDiskConfig::new("/h/volumes/v.img", false));
        let launch = Launch {
            ram: RamBacking::File {
                path: "/h/snapshots/s/memory".into(),
                shared: false,
            },
            incoming: true,
        };
        let reach = qemu_reach(&cfg, &launch);
        let rights = |p: &str| find(&reach, p).map(|r| r.write);
        assert_eq!(rights("/usr"), Some(false));
        assert_eq!(rights("/h/k/vmlinuz"), Some(false));
        assert_eq!(rights("/h/k/initrd"), Some(false));
        assert_eq!(rights("/h/images/root.ext4"), Some(false));
        assert_eq!(rights("/h/volumes/v.img"), Some(true));
        assert_eq!(rights("/run/vm1"), Some(true));
        assert_eq!(rights("/h/snapshots/s/memory"), Some(true));
        assert_eq!(rights("/dev/null"), Some(true));
        assert_eq!(rights("/dev/kvm"), None, "no kvm device under tcg");
        assert_eq!(rights("/etc"), None, "not all of /etc");
        assert_eq!(rights("/proc"), None);
        // Of the user's files (under /h here), only the VM's own.
        let own: Vec<&Path> = reach
            .iter()
            .map(|r| r.path.as_path())
            .filter(|p| p.starts_with("/h"))
            .collect();
        assert_eq!(
            own,
            [
                "/h/images/root.ext4",
                "/h/k/initrd",
                "/h/k/vmlinuz",
                "/h/snapshots/s/memory",
                "/h/volumes/v.img"
            ]
            .map(Path::new)
        );
        cfg.accel = Accel::Kvm;
        let anonymous = Launch {
            ram: RamBacking::Anonymous,
            incoming: false,
        };
        let reach = qemu_reach(&cfg, &anonymous);
        assert_eq!(find(&reach, "/dev/kvm").map(|r| r.write), Some(true));
        assert!(find(&reach, "/h/snapshots/s/memory").is_none());
    }
}
