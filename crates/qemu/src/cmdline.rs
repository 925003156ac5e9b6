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
use std::path::{Path, PathBuf};

use crate::config::{escape_opt_value, Accel, QemuConfig, AGENT_PORT_NAME};

/// The `-M` value.
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on";

/// QEMU's seccomp sandbox as nook uses it.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The id of the guest RAM backend when nook names one: QEMU's own default
/// RAM id for `microvm`, so RAM blocks carry the same name in every
/// migration stream whichever way a VM's RAM is backed.
pub(crate) const RAM_BACKEND_ID: &str = "microvm.ram";

/// How guest RAM is backed on one QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RamBacking {
    /// `-m` alone: private anonymous memory.
    Anonymous,
    /// A `memory-backend-file` mapped shared (writes reach the file: a VM
    /// to snapshot) or private (copy-on-write over the file: a clone).
    File { path: PathBuf, shared: bool },
}

/// What differs between a cold boot and a restore on the command line.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub ram: RamBacking,
    /// Wait for an incoming migration (`-incoming defer`): the state is
    /// fed later with QMP `migrate-incoming`.
    pub incoming: bool,
}

/// The file descriptors (in the child) of QEMU's ends of the host channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelFds {
    pub agent: RawFd,
    pub qmp: RawFd,
    /// The network back end's stream, when the VM has a NIC.
    pub net: Option<RawFd>,
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
            // `tsc=reliable`: under TCG the guest's TSC reads the host's
            // counter, at the frequency given here. Without it the
            // kernel's clocksource watchdog compares the TSC against
            // jiffies, which lose ticks while the emulated kernel boots,
            // declares the TSC unstable and falls back to refined-jiffies:
            // a clock of 4 ms steps that ran about 2 % fast (a 1.5 s sleep
            // took 1.47 s of host time).
            cmdline.push_str(&format!("tsc_early_khz={khz} tsc=reliable"));
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
    launch: &Launch,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(48);
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    let cpu = cfg.cpu_model.as_deref().unwrap_or(match cfg.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    let smp = cfg.vcpus.to_string();
    let mem = format!("{}M", cfg.memory_mib);
    // vhost-user backends (shares) map guest RAM themselves: it must be
    // shared memory, a memfd unless it already is a shared file.
    let memfd = launch.ram == RamBacking::Anonymous && !cfg.shares.is_empty();
    let machine = match launch.ram {
        RamBacking::Anonymous if !memfd => MACHINE.to_owned(),
        _ => format!("{MACHINE},memory-backend={RAM_BACKEND_ID}"),
    };
    push(&[
        "-M",
        &machine,
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
    if let RamBacking::File { path, shared } = &launch.ram {
        let mut backend = OsString::from(format!(
            "memory-backend-file,id={RAM_BACKEND_ID},size={}M,share={},mem-path=",
            cfg.memory_mib,
            if *shared { "on" } else { "off" }
        ));
        backend.push(escape_opt_value(path.as_os_str()));
        args.push("-object".into());
        args.push(backend);
    }
    if memfd {
        args.push("-object".into());
        args.push(
            format!(
                "memory-backend-memfd,id={RAM_BACKEND_ID},size={}M,share=on",
                cfg.memory_mib
            )
            .into(),
        );
    }
    args.extend(cfg.share_args());
    args.extend(cfg.nic_args(fds.net));
    args.extend(cfg.balloon_args());
    if launch.incoming {
        args.push("-incoming".into());
        args.push("defer".into());
    }
    args.extend(cfg.extra_args.iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QemuDiskConfig;

    const BOOT: Launch = Launch {
        ram: RamBacking::Anonymous,
        incoming: false,
    };

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
        cfg.memory_mib = 512;
        cfg.disks.push(QemuDiskConfig::new("/d/root.img", true));
        cfg.extra_args = vec!["-S".into()];
        let fds = ChannelFds {
            agent: 7,
            qmp: 9,
            net: None,
        };
        let args = strings(build_args(
            &cfg,
            Path::new("/run/vm1/console,log"),
            fds,
            Some(2_445_428),
            &BOOT,
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
            ["console=ttyS0 panic=-1 tsc_early_khz=2445428 tsc=reliable"]
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
                "virtio-blk-device,drive=disk0,werror=report,rerror=report"
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
            ChannelFds {
                agent: 3,
                qmp: 4,
                net: None,
            },
            Some(1000),
            &BOOT,
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
        assert_eq!(
            kernel_cmdline(&cfg, Some(5)),
            "tsc_early_khz=5 tsc=reliable"
        );
        assert_eq!(kernel_cmdline(&cfg, None), "");
        cfg.tsc_hint = false;
        assert_eq!(kernel_cmdline(&cfg, Some(5)), "");
    }

    #[test]
    fn file_backed_ram_and_incoming_name_the_backend_on_the_machine() {
        let cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        let launch = Launch {
            ram: RamBacking::File {
                path: "/snap,1/memory".into(),
                shared: false,
            },
            incoming: true,
        };
        let args = strings(build_args(
            &cfg,
            Path::new("c"),
            ChannelFds {
                agent: 3,
                qmp: 4,
                net: None,
            },
            None,
            &launch,
        ));
        assert_eq!(
            value_of(&args, "-M"),
            [format!("{MACHINE},memory-backend=microvm.ram").as_str()]
        );
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-file,id=microvm.ram,size=256M,share=off,mem-path=/snap,,1/memory"]
        );
        assert_eq!(value_of(&args, "-m"), ["256M"]);
        assert_eq!(value_of(&args, "-incoming"), ["defer"]);

        let shared = Launch {
            ram: RamBacking::File {
                path: "/run/vm/guest.ram".into(),
                shared: true,
            },
            incoming: false,
        };
        let args = strings(build_args(
            &cfg,
            Path::new("c"),
            ChannelFds {
                agent: 3,
                qmp: 4,
                net: None,
            },
            None,
            &shared,
        ));
        assert!(value_of(&args, "-object")[0].contains(",share=on,"));
        assert!(value_of(&args, "-incoming").is_empty());
    }
    #[test]
    fn a_nic_gets_a_stream_netdev_on_its_fd() {
        let mut cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        cfg.nic = Some(crate::config::QemuNicConfig {
            mac: "02:4e:00:00:00:01".into(),
        });
        let fds = ChannelFds {
            agent: 3,
            qmp: 4,
            net: Some(11),
        };
        let args = strings(build_args(&cfg, Path::new("c"), fds, None, &BOOT));
        assert_eq!(value_of(&args, "-netdev"), ["socket,id=net0,fd=11"]);
        assert!(value_of(&args, "-device")
            .contains(&"virtio-net-device,netdev=net0,mac=02:4e:00:00:00:01"));
        // Without a NIC there is no network device at all.
        cfg.nic = None;
        let args = strings(build_args(&cfg, Path::new("c"), fds, None, &BOOT));
        assert!(value_of(&args, "-netdev").is_empty());
        assert!(!args.iter().any(|a| a.starts_with("virtio-net")));
    }

    #[test]
    fn a_balloon_is_a_named_device_with_its_options() {
        let mut cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        let fds = ChannelFds {
            agent: 3,
            qmp: 4,
            net: None,
        };
        let args = strings(build_args(&cfg, Path::new("c"), fds, None, &BOOT));
        assert!(!args.iter().any(|a| a.starts_with("virtio-balloon")));
        cfg.balloon = Some(crate::config::QemuBalloonConfig {
            free_page_reporting: true,
            stats_interval_s: 3,
        });
        let args = strings(build_args(&cfg, Path::new("c"), fds, None, &BOOT));
        assert!(value_of(&args, "-device").contains(
            &"virtio-balloon-device,id=balloon0,free-page-reporting=on,guest-stats-polling-interval=3"
        ));
    }

    #[test]
    fn shares_get_shared_memfd_ram_and_vhost_user_fs_devices() {
        let mut cfg = QemuConfig::new("q", Accel::Tcg, "k", "r");
        cfg.shares.push(crate::config::QemuShareConfig {
            socket: "/run/vm,1/fs0.sock".into(),
            tag: "work".into(),
        });
        let args = strings(build_args(
            &cfg,
            Path::new("c"),
            ChannelFds {
                agent: 3,
                qmp: 4,
                net: None,
            },
            None,
            &BOOT,
        ));
        assert_eq!(
            value_of(&args, "-M"),
            [format!("{MACHINE},memory-backend=microvm.ram").as_str()]
        );
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=microvm.ram,size=256M,share=on"]
        );
        assert!(value_of(&args, "-chardev").contains(&"socket,id=fs0,path=/run/vm,,1/fs0.sock"));
        assert!(value_of(&args, "-device").contains(&"vhost-user-fs-device,chardev=fs0,tag=work"));

        // A shared RAM file is already shared: no memfd on top.
        let shared = Launch {
            ram: RamBacking::File {
                path: "/run/vm/guest.ram".into(),
                shared: true,
            },
            incoming: false,
        };
        let args = strings(build_args(
            &cfg,
            Path::new("c"),
            ChannelFds {
                agent: 3,
                qmp: 4,
                net: None,
            },
            None,
            &shared,
        ));
        let objects = value_of(&args, "-object");
        assert_eq!(objects.len(), 1);
        assert!(objects[0].starts_with("memory-backend-file,"));
    }
}
