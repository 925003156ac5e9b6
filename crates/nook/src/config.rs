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
        }
    }
}

impl VmConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::VmError> {
        if self.memory_mib < 64 {
            return Err(crate::VmError::Config("memory must be at least 64 MiB"));
        }
        if self.memory_mib > 512 * 1024 {
            return Err(crate::VmError::Config("memory must be at most 512 GiB"));
        }
        if self.vcpus == 0 {
            return Err(crate::VmError::Config("a VM needs at least one vCPU"));
        }
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
