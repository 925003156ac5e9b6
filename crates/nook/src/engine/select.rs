//! Choosing an engine that runs guest kernels at speed on this host.
//!
//! A present `/dev/kvm` is not enough: under nested or software-assisted
//! virtualization KVM may run guest ring 0 by emulation, thousands of times
//! slower than hardware. So the verdict comes from timing a short ring-0 loop
//! in a throwaway VM (`nook_vmm::probe`), cached per host boot.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::EngineKind;
use crate::error::VmError;

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmVerdict {
    /// `/dev/kvm` can be used at all; otherwise `reason` says why not.
    pub usable: bool,
    /// Guest ring-0 code runs at hardware speed.
    pub hardware_speed: bool,
    /// Measured cost of one iteration of the probe's ring-0 loop.
    pub ns_per_iteration: Option<f64>,
    pub reason: String,
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

    /// A short label such as `qemu (tcg)`.
    pub fn label(&self) -> &'static str {
        match self {
            EngineChoice::Kvm { .. } => "kvm",
            EngineChoice::Qemu {
                kvm_accel: true, ..
            } => "qemu (kvm)",
            EngineChoice::Qemu {
                kvm_accel: false, ..
            } => "qemu (tcg)",
        }
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Probes KVM, reusing the verdict cached in `home` for this host boot.
pub fn probe_kvm(home: &Path) -> KvmVerdict {
    let cache = home.join("kvm-probe.json");
    let boot = boot_id();
    if let Some(v) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<KvmVerdict>(&b).ok())
        .filter(|v| v.boot_id == boot && !boot.is_empty())
    {
        return v;
    }
    let verdict = match nook_vmm::probe::kvm_available() {
        Err(e) => KvmVerdict {
            usable: false,
            hardware_speed: false,
            ns_per_iteration: None,
            reason: e.to_string(),
            boot_id: boot,
        },
        Ok(()) => match nook_vmm::probe::measure_ring0() {
            Ok(p) => KvmVerdict {
                usable: true,
                hardware_speed: p.at_hardware_speed,
                ns_per_iteration: Some(p.ns_per_iteration),
                reason: if p.at_hardware_speed {
                    format!(
                        "KVM runs guest ring-0 code at hardware speed ({:.1} ns per probe-loop iteration)",
                        p.ns_per_iteration
                    )
                } else {
                    format!(
                        "KVM runs guest kernels emulated here ({:.0} ns per probe-loop iteration, hardware does it in under {:.0} ns): nested or software-assisted virtualization",
                        p.ns_per_iteration,
                        nook_vmm::probe::HARDWARE_SPEED_THRESHOLD_NS
                    )
                },
                boot_id: boot,
            },
            Err(e) => KvmVerdict {
                usable: false,
                hardware_speed: false,
                ns_per_iteration: None,
                reason: format!("the KVM probe failed: {e}"),
                boot_id: boot,
            },
        },
    };
    let _ = std::fs::create_dir_all(home);
    if let Ok(bytes) = serde_json::to_vec_pretty(&verdict) {
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    verdict
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
