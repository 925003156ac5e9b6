//! Shared fixtures for the QEMU engine's tests: environment look-ups that
//! skip with a reason, and a tiny busybox initramfs written as a newc cpio.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use nook_qemu::{locate_qemu, Accel, QemuConfig};

/// Kernel command line used by the tests: early console so that
/// `Linux version` shows up even with `quiet`.
pub const TEST_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 quiet panic=-1";

/// The value of `var` as a path, or `None` after printing why the test is
/// skipped.
pub fn env_path(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            eprintln!("skipping: {var} is not set (point it at {what})");
            None
        }
    }
}

/// The QEMU binary, or `None` after printing why the test is skipped.
pub fn qemu() -> Option<PathBuf> {
    match locate_qemu() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// QEMU plus `NOOK_TEST_KERNEL`, or `None` after printing why not.
pub fn qemu_and_kernel() -> Option<(PathBuf, PathBuf)> {
    let qemu = qemu()?;
    let kernel = env_path(
        "NOOK_TEST_KERNEL",
        "a guest kernel, e.g. Debian's vmlinuz-*-cloud-amd64",
    )?;
    Some((qemu, kernel))
}

/// A TCG config for the test kernel, in a fresh run directory.
pub fn tcg_config(qemu: &Path, kernel: &Path, run_dir: &Path) -> QemuConfig {
    let mut cfg = QemuConfig::new(qemu, Accel::Tcg, kernel, run_dir);
    cfg.cmdline = TEST_CMDLINE.to_owned();
    cfg
}

/// Writes a newc ("070701") cpio archive.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter { out, ino: 1 }
    }

    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040_755, &[], (0, 0))
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100_000 | mode, data, (0, 0))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, 0o120_777, target.as_bytes(), (0, 0))
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> std::io::Result<()> {
        self.entry(name, 0o020_600, &[], (major, minor))
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| std::io::ErrorKind::FileTooLarge)?;
        let namesize = name.len() as u32 + 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

/// Kernel modules the test guest loads, in load order.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
];

/// Builds an initramfs with static busybox, the virtio modules found under
/// `modules_dir` (a `lib/modules/<release>` directory) and `init_script` as
/// `/init`. Modules missing from `modules_dir` are assumed built in.
pub fn busybox_initramfs(modules_dir: &Path, init_script: &str) -> std::io::Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox")?;
    let mut cpio = CpioWriter::new(Vec::new());
    for dir in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(dir)?;
    }
    cpio.char_dev("dev/console", 5, 1)?;
    cpio.file("bin/busybox", 0o755, &busybox)?;
    cpio.symlink("bin/sh", "busybox")?;
    for name in GUEST_MODULES {
        if let Some(path) = find_file(modules_dir, &format!("{name}.ko"))? {
            cpio.file(
                &format!("lib/modules/{name}.ko"),
                0o644,
                &std::fs::read(path)?,
            )?;
        }
    }
    cpio.file("init", 0o755, init_script.as_bytes())?;
    cpio.finish()
}

fn find_file(dir: &Path, name: &str) -> std::io::Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if let Some(found) = find_file(&path, name)? {
                return Ok(Some(found));
            }
        } else if entry.file_name() == name {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The start of every test guest's `/init`: mounts, busybox applets, modules.
pub const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_mmio virtio_console virtio_blk; do
    [ -e /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i+1))
        if [ $i -gt 1000 ]; then echo "nook-test: $1 never appeared"; poweroff -f; fi
        usleep 10000
    done
}
# Prints the device node of the virtio-serial port named $1. The node can
# exist before the port is usable (opening it then fails with ENXIO); the port
# name arrives from the host only after that, so wait for the name.
find_port() {
    i=0
    while :; do
        for p in /sys/class/virtio-ports/*; do
            if [ "$(cat $p/name 2>/dev/null)" = "$1" ]; then echo /dev/${p##*/}; return; fi
        done
        i=$((i+1))
        if [ $i -gt 1000 ]; then echo "nook-test: no port named $1" >&2; poweroff -f; fi
        usleep 10000
    done
}
"#;

/// Whether process `pid` is gone (or a zombie awaiting a reaper).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}
