//! Choosing an engine that runs guest kernels at speed on this host.
//!
//! A present `/dev/kvm` is not enough: under nested or software-assisted
//! virtualization KVM may run guest ring 0 by emulation, thousands of times
//! slower than hardware. So the verdict comes from timing a short ring-0 loop
//! in a throwaway VM (`nook_vmm::probe`), cached per host boot.

use std::path::Path;

use serde::{Deserialize, Serialize};

use nook_vmm::probe::Ring0Speed;

use super::EngineId;
use crate::config::EngineKind;
use crate::error::VmError;

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmVerdict {
    /// `/dev/kvm` can be used at all; otherwise `reason` says why not.
    pub usable: bool,
    /// Guest ring-0 code runs at hardware speed.
    pub hardware_speed: bool,
    /// Measured cost of one iteration of the probe's ring-0 loop (the
    /// fastest conclusive trial).
    pub ns_per_iteration: Option<f64>,
    pub reason: String,
    /// Every timed trial of the probe (empty when it did not run).
    #[serde(default)]
    pub trials: Vec<nook_vmm::probe::ProbeTrial>,
    /// The probe's verdict over its trials, when it ran.
    #[serde(default)]
    pub speed: Option<nook_vmm::probe::Ring0Speed>,
    /// The host boot this verdict belongs to.
    pub boot_id: String,
}

/// The engine a run will use and why.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineChoice {
    Kvm {
        hardware_speed: bool,
        reason: String,
    },
    Qemu {
        kvm_accel: bool,
        reason: String,
    },
}

impl EngineChoice {
    pub fn reason(&self) -> &str {
        match self {
            EngineChoice::Kvm { reason, .. } | EngineChoice::Qemu { reason, .. } => reason,
        }
    }

    /// The engine that runs.
    pub fn id(&self) -> EngineId {
        match self {
            EngineChoice::Kvm { .. } => EngineId::Kvm,
            EngineChoice::Qemu {
                kvm_accel: true, ..
            } => EngineId::QemuKvm,
            EngineChoice::Qemu {
                kvm_accel: false, ..
            } => EngineId::QemuTcg,
        }
    }

    /// A short label such as `qemu (tcg)`.
    pub fn label(&self) -> &'static str {
        self.id().label()
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Forces the probe to report hardware speed without measuring (and
/// without touching the cached verdict): fault injection for tests of what
/// `auto` does when KVM was wrongly judged fast.
pub const FAULT_KVM_HARDWARE: &str = "NOOK_FAULT_KVM_HARDWARE";

fn cache_path(home: &Path) -> std::path::PathBuf {
    home.join("kvm-probe.json")
}

/// Probes KVM, reusing the verdict cached in `home` for this host boot.
pub fn probe_kvm(home: &Path) -> KvmVerdict {
    let boot = boot_id();
    if std::env::var_os(FAULT_KVM_HARDWARE).is_some() {
        return KvmVerdict {
            usable: true,
            hardware_speed: true,
            ns_per_iteration: None,
            reason: format!("{FAULT_KVM_HARDWARE} is set: KVM is taken to run at hardware speed without probing"),
            trials: Vec::new(),
            speed: None,
            boot_id: boot,
        };
    }
    if let Some(v) = std::fs::read(cache_path(home))
        .ok()
        .and_then(|b| serde_json::from_slice::<KvmVerdict>(&b).ok())
        .filter(|v| v.boot_id == boot && !boot.is_empty())
    {
        return v;
    }
    let verdict = measure_verdict(boot);
    // An inconclusive probe is not remembered: the next run measures again.
    if verdict.speed != Some(Ring0Speed::Inconclusive) {
        store_verdict(home, &verdict);
    }
    verdict
}

fn measure_verdict(boot: String) -> KvmVerdict {
    let unusable = |reason: String, boot: String| KvmVerdict {
        usable: false,
        hardware_speed: false,
        ns_per_iteration: None,
        reason,
        trials: Vec::new(),
        speed: None,
        boot_id: boot,
    };
    if let Err(e) = nook_vmm::probe::kvm_available() {
        return unusable(e.to_string(), boot);
    }
    let p = match nook_vmm::probe::measure_ring0() {
        Ok(p) => p,
        Err(e) => return unusable(format!("the KVM probe failed: {e}"), boot),
    };
    let threshold = nook_vmm::probe::HARDWARE_SPEED_THRESHOLD_NS;
    let reason = match p.speed {
        Ring0Speed::Hardware => format!(
            "KVM runs guest ring-0 code at hardware speed ({:.1} ns per probe-loop iteration)",
            p.ns_per_iteration
        ),
        Ring0Speed::Emulated => format!(
            "KVM runs guest kernels emulated here ({:.0} ns per probe-loop iteration, hardware does it in under {threshold:.0} ns): nested or software-assisted virtualization",
            p.ns_per_iteration
        ),
        Ring0Speed::Inconclusive => format!(
            "the KVM speed probe was inconclusive ({} trials, too few plausible), so KVM is not trusted to run guest kernels at speed",
            p.trials.len()
        ),
    };
    KvmVerdict {
        usable: true,
        hardware_speed: p.at_hardware_speed,
        ns_per_iteration: (p.speed != Ring0Speed::Inconclusive).then_some(p.ns_per_iteration),
        reason,
        trials: p.trials,
        speed: Some(p.speed),
        boot_id: boot,
    }
}

fn store_verdict(home: &Path, verdict: &KvmVerdict) {
    let _ = std::fs::create_dir_all(home);
    if let Ok(bytes) = serde_json::to_vec_pretty(verdict) {
        use std::io::Write;
        // A cache: failing to write it only costs the next run a probe.
        let _ = nook_fsutil::write_atomic(&cache_path(home), 0o644, |f| f.write_all(&bytes));
    }
}

/// Records, for the rest of this host boot, that a guest did not come up on
/// the kvm engine here, so `auto` goes straight to qemu from now on.
pub fn record_kvm_boot_failure(home: &Path, why: &str) {
    if std::env::var_os(FAULT_KVM_HARDWARE).is_some() {
        // An injected verdict says nothing about this host: keep the real one.
        return;
    }
    let mut verdict = probe_kvm(home);
    verdict.hardware_speed = false;
    verdict.reason = format!("a guest did not boot on the kvm engine on this host ({why})");
    store_verdict(home, &verdict);
}

/// Resolves the requested engine to the one that will run.
pub fn select_engine(kind: EngineKind, home: &Path) -> Result<EngineChoice, VmError> {
    let v = probe_kvm(home);
    match kind {
        EngineKind::Kvm => {
            if !v.usable {
                return Err(VmError::KvmUnavailable(v.reason));
            }
            let reason = if v.hardware_speed {
                "requested; ".to_string() + &v.reason
            } else {
                format!("requested, but it will be very slow: {}", v.reason)
            };
            Ok(EngineChoice::Kvm {
                hardware_speed: v.hardware_speed,
                reason,
            })
        }
        EngineKind::Qemu => Ok(EngineChoice::Qemu {
            kvm_accel: v.usable && v.hardware_speed,
            reason: format!("requested; accelerator chosen because {}", v.reason),
        }),
        EngineKind::Auto if v.usable && v.hardware_speed => Ok(EngineChoice::Kvm {
            hardware_speed: true,
            reason: v.reason,
        }),
        EngineKind::Auto => Ok(EngineChoice::Qemu {
            kvm_accel: false,
            reason: v.reason,
        }),
    }
}
