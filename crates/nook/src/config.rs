//! VM configuration.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Which engine runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// The fastest engine that works at speed on this host (see
    /// [`crate::select_engine`]).
    #[default]
    Auto,
    /// QEMU's `microvm` machine, accelerated by KVM when KVM runs guest
    /// kernels at hardware speed, else by TCG.
    Qemu,
    /// nook's own VMM on KVM.
    Kvm,
}

impl EngineKind {
    /// The engine's name as `--engine` spells it (and [`FromStr`] reads it).
    pub fn name(&self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Qemu => "qemu",
            EngineKind::Kvm => "kvm",
        }
    }
}

impl FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "qemu" => Ok(EngineKind::Qemu),
            "kvm" => Ok(EngineKind::Kvm),
            other => Err(format!("unknown engine `{other}`: use auto, qemu or kvm")),
        }
    }
}

/// Everything needed to start a [`crate::Vm`].
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub engine: EngineKind,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    pub vcpus: u8,
    /// A kernel image to boot instead of Debian's cloud kernel (`NOOK_KERNEL`).
    pub kernel: Option<PathBuf>,
    /// The kernel's `lib/modules/RELEASE` directory, when it needs modules.
    pub kernel_modules: Option<PathBuf>,
    /// nook's cache directory (`NOOK_HOME`).
    pub home: PathBuf,
    /// The guest agent binary; found next to the running executable when unset
    /// (`NOOK_AGENT`).
    pub agent: Option<PathBuf>,
    /// How long to wait for the guest agent to report ready.
    pub boot_timeout: Duration,
    /// Show progress bars for long work (on a terminal only).
    pub progress: bool,
    /// Extra kernel command line.
    pub cmdline: String,
    /// Set to abandon a boot in progress (a signal handler's flag).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Boot from this image's root file system instead of the built-in
    /// initramfs root; its config gives every command its defaults.
    pub image: Option<crate::ImageRoot>,
    /// ext4 disks mounted in the guest (named volumes or image files).
    pub volumes: Vec<crate::VolumeMount>,
    /// Host directories shared into the guest (virtio-fs; qemu engine).
    pub shares: Vec<crate::ShareConfig>,
    /// Start from this configuration's template snapshot when there is one,
    /// and make it on the first boot (see `template.rs`): a restore instead
    /// of a boot. Off with `NOOK_NO_TEMPLATE=1`. Configurations with
    /// volumes, shares or a scratch disk always boot.
    pub template: bool,
    /// The VM's network: `None` (the default) gives the guest no network
    /// device at all, only `lo`. `Some` gives it a NIC behind nook's
    /// user-mode NAT with the config's published ports, egress rules and
    /// static host entries (plain data: `Eq + Hash + Serialize`).
    pub net: Option<crate::NetConfig>,
    /// A memory balloon (virtio-balloon) through which the host asks the
    /// guest for memory back ([`crate::Vm::set_balloon`]); none by default.
    /// A VM with a balloon always boots (no template).
    pub balloon: Option<crate::BalloonConfig>,
    /// Who runs this VM, in words (`nook run`, `session dev`): named, with
    /// this process's id, when another VM or `nook volume rm` finds a
    /// volume of this one locked.
    pub holder: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            engine: EngineKind::Auto,
            memory_mib: 256,
            vcpus: 1,
            kernel: std::env::var_os("NOOK_KERNEL").map(PathBuf::from),
            kernel_modules: std::env::var_os("NOOK_KERNEL_MODULES").map(PathBuf::from),
            home: nook_assets::default_home(),
            agent: std::env::var_os("NOOK_AGENT").map(PathBuf::from),
            boot_timeout: Duration::from_secs(60),
            progress: true,
            cmdline: String::new(),
            cancel: None,
            image: None,
            volumes: Vec::new(),
            shares: Vec::new(),
            template: std::env::var_os("NOOK_NO_TEMPLATE").is_none_or(|v| v.is_empty() || v == "0"),
            net: None,
            balloon: None,
            holder: "nook".to_string(),
        }
    }
}

impl VmConfig {
    /// Resolves each share's host directory once (symlinks followed; see
    /// [`crate::ShareConfig::resolved`]).
    pub(crate) fn resolve_shares(&mut self) -> Result<(), crate::VmError> {
        for share in &mut self.shares {
            *share = share.resolved()?;
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), crate::VmError> {
        check_memory(self.memory_mib).map_err(crate::VmError::Resources)?;
        check_vcpus(self.vcpus, self.engine).map_err(crate::VmError::Resources)?;
        for share in &self.shares {
            share.validate()?;
        }
        if let Some(net) = &self.net {
            net.validate()
                .map_err(|e| crate::VmError::Net(nook_net::NetError::Config(e)))?;
        }
        Ok(())
    }
}

/// The least guest memory nook boots with.
pub const MIN_MEMORY_MIB: u32 = 64;

/// The most guest memory nook gives a VM: the host's RAM (and at most
/// 512 GiB). Guest memory is allocated as the guest touches it, but a VM
/// larger than the host would only end in the host's OOM killer.
pub fn memory_limit_mib() -> u32 {
    const CAP: u32 = 512 * 1024;
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match total_kib {
        Some(kib) => u32::try_from(kib / 1024).unwrap_or(CAP).min(CAP),
        None => CAP,
    }
}

/// The most vCPUs `engine` supports (`auto` may choose the kvm engine, so
/// it has the kvm engine's limit).
pub fn vcpu_limit(engine: EngineKind) -> u8 {
    match engine {
        EngineKind::Kvm | EngineKind::Auto => nook_vmm::config::MAX_VCPUS,
        // QEMU's microvm takes more than a u8 can say.
        EngineKind::Qemu => u8::MAX,
    }
}

/// A VM size outside what this host and engine allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResourceLimit {
    #[error("{requested} MiB of guest memory is not between {MIN_MEMORY_MIB} MiB and {max} MiB (this host's RAM)")]
    Memory { requested: u32, max: u32 },
    #[error("{requested} vCPUs is not between 1 and {max}, the most the {} engine supports", engine_name(*engine))]
    Vcpus {
        requested: u8,
        max: u8,
        engine: EngineKind,
    },
}

fn engine_name(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Auto => "kvm",
        EngineKind::Kvm => "kvm",
        EngineKind::Qemu => "qemu",
    }
}

/// Checks a guest memory size against [`MIN_MEMORY_MIB`] and
/// [`memory_limit_mib`].
pub fn check_memory(memory_mib: u32) -> Result<(), ResourceLimit> {
    let max = memory_limit_mib();
    if !(MIN_MEMORY_MIB..=max).contains(&memory_mib) {
        return Err(ResourceLimit::Memory {
            requested: memory_mib,
            max,
        });
    }
    Ok(())
}

/// Checks a vCPU count against [`vcpu_limit`].
pub fn check_vcpus(vcpus: u8, engine: EngineKind) -> Result<(), ResourceLimit> {
    let max = vcpu_limit(engine);
    if vcpus == 0 || vcpus > max {
        return Err(ResourceLimit::Vcpus {
            requested: vcpus,
            max,
            engine,
        });
    }
    Ok(())
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn memory_is_bounded_by_the_host() {
        let max = memory_limit_mib();
        assert!(max >= MIN_MEMORY_MIB);
        assert!(check_memory(256.min(max)).is_ok());
        assert!(check_memory(MIN_MEMORY_MIB - 1).is_err());
        let too_much = check_memory(max + 1).unwrap_err();
        assert!(too_much.to_string().contains("host's RAM"), "{too_much}");
    }

    #[test]
    fn vcpus_are_bounded_by_the_engine() {
        assert!(check_vcpus(0, EngineKind::Qemu).is_err());
        assert!(check_vcpus(nook_vmm::config::MAX_VCPUS, EngineKind::Kvm).is_ok());
        assert!(check_vcpus(nook_vmm::config::MAX_VCPUS + 1, EngineKind::Kvm).is_err());
        assert!(check_vcpus(nook_vmm::config::MAX_VCPUS + 1, EngineKind::Auto).is_err());
        assert!(check_vcpus(nook_vmm::config::MAX_VCPUS + 1, EngineKind::Qemu).is_ok());
    }
}
