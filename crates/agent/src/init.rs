//! PID 1 duties: pseudo filesystems, modules, the root and volumes, hostname,
//! power off.

use std::fs;
use std::io;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::Signal;

use nook_proto::BootWords;

use crate::{modules, net, shares, storage};

/// Mounts proc, sysfs, devtmpfs, devpts and the tmpfs mounts, loads the
/// modules from the manifest, switches to the image root and mounts the
/// volumes and shares the command line's boot words name (see [`storage`],
/// [`shares`]), and names the host. Returns the boot words.
pub fn setup() -> io::Result<BootWords> {
    mount_fs(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    fs::create_dir_all("/dev/pts")?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
    )?;
    // /dev/ptmx from devtmpfs is the legacy node; point it at this devpts.
    let _ = fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")?;
    fs::create_dir_all("/dev/shm")?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    modules::load_manifest(modules::MANIFEST, &cmdline);
    let words =
        BootWords::parse(&cmdline).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    storage::setup(&words)?;
    // Shares go into the final root, after the image root (if any) is `/`.
    shares::mount_all(&words.shares);
    // After the root switch: /etc/resolv.conf belongs in the final root.
    if let Err(e) = net::setup(words.net.as_ref()) {
        crate::log(&format!("cannot configure the network: {e}"));
    }
    let _ = nix::unistd::sethostname("nook");
    Ok(words)
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mount {fstype} on {target}: {e}"),
        )
    })
}

/// Flushes file systems and powers the machine off. Never returns.
pub fn power_off() -> ! {
    if std::process::id() == 1 {
        // Nothing may hold a volume busy: end every other process, then
        // unmount the volumes so the host finds them clean.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
        nix::unistd::sync();
        storage::unmount_volumes();
    }
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Only reached when not allowed to reboot (not PID 1 in a VM).
    std::process::exit(1)
}
