//! Turning a [`QemuConfig`] into QEMU's argument vector.
//!
//! The machine is `microvm` with option ROMs off (nothing to load: the kernel
//! is handed over directly), the ISA serial port on for the console, the RTC
//! on so the guest boots with the right wall-clock time, and ACPI on so the
//! guest can power itself off (QEMU exits) and finds its virtio-mmio devices
//! in the DSDT. Host channels are socket pairs whose QEMU ends are inherited
//! as file descriptors: they are connected before QEMU starts, so nothing
//! waits on an accept and no socket path (with its 108-byte limit) exists.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::Path;

use crate::config::{escape_opt_value, Accel, QemuConfig, AGENT_PORT_NAME};

/// The `-M` value.
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on";

/// QEMU's seccomp sandbox as nook uses it.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The file descriptors (in the child) of QEMU's ends of the host channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelFds {
    pub agent: RawFd,
    pub qmp: RawFd,
}

/// The kernel command line actually passed: the configured one plus the TSC
/// hint under TCG (see [`QemuConfig::tsc_hint`]).
pub(crate) fn kernel_cmdline(cfg: &QemuConfig, tsc_khz: Option<u64>) -> String {
    let mut cmdline = cfg.cmdline.trim().to_owned();
    if cfg.accel == Accel::Tcg && cfg.tsc_hint && !cmdline.contains("tsc_early_khz=") {
        if let Some(khz) = tsc_khz {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&format!("tsc_early_khz={khz}"));
        }
    }
    cmdline
}

/// QEMU's arguments (without the program name).
pub(crate) fn build_args(
    cfg: &QemuConfig,
    console_log: &Path,
    fds: ChannelFds,
    tsc_khz: Option<u64>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(48);
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let cpu = cfg.cpu_model.as_deref().unwrap_or(match cfg.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    let smp = cfg.vcpus.to_string();
    let mem = format!("{}M", cfg.mem_mib);
    push(&[
        "-M",
        MACHINE,
        "-accel",
        cfg.accel.as_qemu_arg(),
        "-cpu",
        cpu,
    ]);
    push(&["-smp", &smp, "-m", &mem]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if cfg.sandbox {
        push(&["-sandbox", SANDBOX]);
    }
    let cmdline = kernel_cmdline(cfg, tsc_khz);
    push(&["-append", &cmdline]);

    // Serial console into the per-VM log file.
    let mut console = OsString::from("file,id=console,path=");
    console.push(escape_opt_value(console_log.as_os_str()));
    let agent = format!("socket,id=agent,fd={}", fds.agent);
    let port = format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}");
    let qmp = format!("socket,id=qmp,fd={}", fds.qmp);
    push(&["-serial", "chardev:console"]);
    push(&["-chardev", &agent, "-device", "virtio-serial-device"]);
    push(&["-device", &port]);
    push(&["-chardev", &qmp, "-mon", "chardev=qmp,mode=control"]);
    if cfg.rng {
        push(&["-device", "virtio-rng-device"]);
    }
    // `-kernel`, `-initrd` and `-chardev file` take paths that may not be
    // UTF-8, so they are pushed as OsStrings.
    args.push("-chardev".into());
    args.push(console);
    args.push("-kernel".into());
    args.push(cfg.kernel.clone().into());
    if let Some(initrd) = &cfg.initrd {
        args.push("-initrd".into());
        args.push(initrd.clone().into());
    }
    args.extend(cfg.disk_args());
    args.extend(cfg.extra_args.iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskConfig;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_line_has_machine_cpu_channels_and_console() {
        let mut cfg = QemuConfig::new("/usr/bin/qemu", Accel::Tcg, "/k/vmlinuz", "/run/vm1");
        cfg.initrd = Some("/k/initrd".into());
        cfg.vcpus = 2;
        cfg.mem_mib = 512;
        cfg.disks.push(DiskConfig::new("/d/root.img", true));
        cfg.extra_args = vec!["-S".into()];
        let fds = ChannelFds { agent: 7, qmp: 9 };
        let args = strings(build_args(
            &cfg,
            Path::new("/run/vm1/console,log"),
            fds,
            Some(2_445_428),
        ));
        assert_eq!(value_of(&args, "-M"), [MACHINE]);
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-cpu"), ["max"]);
        assert_eq!(value_of(&args, "-smp"), ["2"]);
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(value_of(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(value_of(&args, "-initrd"), ["/k/initrd"]);
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 panic=-1 tsc_early_khz=2445428"]
        );
        assert_eq!(
            value_of(&args, "-chardev"),
            [
                "socket,id=agent,fd=7",
                "socket,id=qmp,fd=9",
                "file,id=console,path=/run/vm1/console,,log"
            ]
        );
        assert_eq!(value_of(&args, "-serial"), ["chardev:console"]);
        assert_eq!(value_of(&args, "-mon"), ["chardev=qmp,mode=control"]);
        assert_eq!(
            value_of(&args, "-device"),
            [
                "virtio-serial-device",
                "virtserialport,chardev=agent,name=nook.agent",
                "virtio-rng-device",
                "virtio-blk-device,drive=disk0"
            ]
        );
        assert_eq!(value_of(&args, "-sandbox"), [SANDBOX]);
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "missing {flag}");
        }
        assert_eq!(args.last().map(String::as_str), Some("-S"));
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_tsc_hint() {
        let mut cfg = QemuConfig::new("q", Accel::Kvm, "k", "r");
        cfg.rng = false;
        cfg.sandbox = false;
        let args = strings(build_args(
            &cfg,
            Path::new("c"),
            ChannelFds { agent: 3, qmp: 4 },
            Some(1000),
        ));
        assert_eq!(value_of(&args, "-cpu"), ["host"]);
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        assert_eq!(value_of(&args, "-append"), ["console=ttyS0 panic=-1"]);
        assert!(!args
            .iter()
            .any(|a| a == "virtio-rng-device" || a == "-sandbox"));
        assert!(!args.iter().any(|a| a == "-initrd"));
    }

    #[test]
    fn tsc_hint_respects_config_and_existing_value() {
        let mut cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        cfg.cmdline = "console=ttyS0 tsc_early_khz=1".into();
        assert_eq!(
            kernel_cmdline(&cfg, Some(5)),
            "console=ttyS0 tsc_early_khz=1"
        );
        cfg.cmdline = String::new();
        assert_eq!(kernel_cmdline(&cfg, Some(5)), "tsc_early_khz=5");
        assert_eq!(kernel_cmdline(&cfg, None), "");
        cfg.tsc_hint = false;
        assert_eq!(kernel_cmdline(&cfg, Some(5)), "");
    }
}
