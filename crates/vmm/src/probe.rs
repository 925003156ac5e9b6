//! Host capability probes: can we open `/dev/kvm`, and does it run guest
//! kernel code (ring 0) at hardware speed?
//!
//! On some hosts (nested, software-assisted KVM) `/dev/kvm` works but guest
//! ring 0 is emulated instruction by instruction (~0.5M instructions/s), so a
//! Linux guest never finishes booting. [`measure_ring0`] times a short ring-0
//! loop in a throwaway VM so that the caller can pick another engine. The
//! verdict is not cached here; callers cache it.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// A probe loop iteration slower than this (nanoseconds) means ring 0 is not
/// running at hardware speed.
///
/// One iteration is two instructions (`dec ecx; jnz`). Hardware KVM runs it
/// in about a nanosecond; a software-emulated ring 0 (~0.5M instructions/s)
/// takes about 4000 ns. 100 ns leaves a wide margin on both sides.
pub const HARDWARE_SPEED_THRESHOLD_NS: f64 = 100.0;

/// Iterations of each timed ring-0 loop: ~20 us on hardware (so the fixed
/// cost of entering the guest is a few percent at most), ~15 ms when
/// emulated.
pub const PROBE_ITERATIONS: u32 = 20_000;

/// Timed trials per probe round.
pub const PROBE_TRIALS: usize = 5;

/// Conclusive trials a verdict needs; rounds are repeated (up to
/// [`PROBE_ROUNDS`]) until there are this many.
pub const MIN_CONCLUSIVE_TRIALS: usize = 3;

/// Rounds of [`PROBE_TRIALS`] trials at most.
pub const PROBE_ROUNDS: usize = 3;

/// Guest-physical address the probe code is loaded at.
const CODE_ADDR: u64 = 0x1000;
/// Size of the throwaway VM's memory.
const PROBE_MEM: usize = 0x10000;

/// Errors of the host probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm is not accessible: add your user to the kvm group or use --engine qemu")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("unsupported kvm api version {0}: use --engine qemu")]
    KvmApiVersion(i32),
    /// An ioctl on the throwaway VM failed.
    #[error("ring-0 probe failed at {op}")]
    Kvm {
        /// The operation that failed.
        op: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Probe guest memory could not be allocated.
    #[error("cannot allocate probe guest memory")]
    MemoryAlloc(#[source] vm_memory::mmap::FromRangesError),
    /// Probe guest memory could not be written or addressed.
    #[error("cannot access probe guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The probe guest did something other than halting.
    #[error("ring-0 probe guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
}

/// What one trial (or a whole probe) says about guest ring 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ring0Speed {
    /// Ring-0 code runs at hardware speed.
    Hardware,
    /// Ring-0 code is emulated (or otherwise far slower than hardware).
    Emulated,
    /// The measurement cannot be trusted (a clock or scheduling anomaly).
    Inconclusive,
}

/// One timed trial: a one-iteration run (the fixed cost of entering and
/// leaving the guest) and a [`PROBE_ITERATIONS`] run, both in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeTrial {
    /// Iterations of the timed run.
    pub iterations: u32,
    /// Wall time of the one-iteration run.
    pub baseline_ns: u64,
    /// Wall time of the timed run, entry cost included.
    pub timed_ns: u64,
}

impl ProbeTrial {
    /// The timed run's cost per iteration, entry cost *not* subtracted: an
    /// upper bound of the true cost, so noise can only make ring 0 look
    /// slower, never faster.
    pub fn ns_per_iteration(&self) -> f64 {
        self.timed_ns as f64 / f64::from(self.iterations.max(1))
    }

    /// This trial's verdict. A timed run no slower than the one-iteration
    /// run, or one that took no time at all, is impossible if both really
    /// ran: the trial is inconclusive rather than evidence of speed.
    pub fn speed(&self) -> Ring0Speed {
        if self.iterations == 0 || self.timed_ns == 0 || self.timed_ns <= self.baseline_ns {
            Ring0Speed::Inconclusive
        } else if self.ns_per_iteration() < HARDWARE_SPEED_THRESHOLD_NS {
            Ring0Speed::Hardware
        } else {
            Ring0Speed::Emulated
        }
    }
}

/// The verdict over several trials: the fastest conclusive trial decides
/// (every trial overestimates, so the fastest is the closest to the truth),
/// and fewer than [`MIN_CONCLUSIVE_TRIALS`] conclusive trials is
/// inconclusive.
pub fn verdict(trials: &[ProbeTrial]) -> (Ring0Speed, Option<f64>) {
    let fastest = trials
        .iter()
        .filter(|t| t.speed() != Ring0Speed::Inconclusive)
        .map(ProbeTrial::ns_per_iteration)
        .fold(None, |min: Option<f64>, ns| {
            Some(min.map_or(ns, |m| m.min(ns)))
        });
    let conclusive = trials
        .iter()
        .filter(|t| t.speed() != Ring0Speed::Inconclusive)
        .count();
    match fastest {
        Some(ns) if conclusive >= MIN_CONCLUSIVE_TRIALS => {
            let speed = if ns < HARDWARE_SPEED_THRESHOLD_NS {
                Ring0Speed::Hardware
            } else {
                Ring0Speed::Emulated
            };
            (speed, Some(ns))
        }
        _ => (Ring0Speed::Inconclusive, fastest),
    }
}

/// Result of timing ring-0 loops in a throwaway VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring0Probe {
    /// Every trial, in the order it ran.
    pub trials: Vec<ProbeTrial>,
    /// The verdict over the trials.
    pub speed: Ring0Speed,
    /// The fastest conclusive trial's cost per iteration, in nanoseconds
    /// (0 when no trial was conclusive).
    pub ns_per_iteration: f64,
    /// `speed == Ring0Speed::Hardware`.
    pub at_hardware_speed: bool,
}

/// Checks that `/dev/kvm` can be opened and speaks the stable API.
pub fn kvm_available() -> Result<(), ProbeError> {
    let kvm = Kvm::new().map_err(ProbeError::KvmUnavailable)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(ProbeError::KvmApiVersion(version));
    }
    Ok(())
}

/// Times ring-0 loops in a throwaway VM: rounds of [`PROBE_TRIALS`] trials
/// until [`MIN_CONCLUSIVE_TRIALS`] are conclusive (at most
/// [`PROBE_ROUNDS`] rounds).
///
/// The guest runs in flat 32-bit protected mode: `l: dec ecx; jnz l; hlt`.
/// Each trial first runs one iteration (the fixed cost of entering and
/// leaving the guest, used only as a plausibility check), then
/// [`PROBE_ITERATIONS`]; a run that did not count `ecx` down to zero is an
/// error, not a fast result.
pub fn measure_ring0() -> Result<Ring0Probe, ProbeError> {
    let kvm = Kvm::new().map_err(ProbeError::KvmUnavailable)?;
    let kerr = |op| move |source| ProbeError::Kvm { op, source };
    // Declared before `vm` so that the VM (and its memory slot) goes away
    // before the memory is unmapped.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PROBE_MEM)])
        .map_err(ProbeError::MemoryAlloc)?;
    // l: dec ecx; jnz l; hlt
    let code = [0x49u8, 0x75, 0xfd, 0xf4];
    mem.write_slice(&code, GuestAddress(CODE_ADDR))
        .map_err(ProbeError::Memory)?;
    let vm = kvm.create_vm().map_err(kerr("create vm"))?;
    register_memory(&vm, &mem)?;
    let mut vcpu = vm.create_vcpu(0).map_err(kerr("create vcpu"))?;
    setup_protected_mode(&vcpu)?;

    let mut trials = Vec::new();
    for _ in 0..PROBE_ROUNDS {
        for _ in 0..PROBE_TRIALS {
            let baseline = run_loop(&mut vcpu, 1)?;
            let timed = run_loop(&mut vcpu, PROBE_ITERATIONS)?;
            trials.push(ProbeTrial {
                iterations: PROBE_ITERATIONS,
                baseline_ns: duration_ns(baseline),
                timed_ns: duration_ns(timed),
            });
        }
        if verdict(&trials).0 != Ring0Speed::Inconclusive {
            break;
        }
    }
    let (speed, ns) = verdict(&trials);
    Ok(Ring0Probe {
        trials,
        speed,
        ns_per_iteration: ns.unwrap_or(0.0),
        at_hardware_speed: speed == Ring0Speed::Hardware,
    })
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), ProbeError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(ProbeError::Memory)?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`; in
        // `measure_ring0` `mem` is declared before `vm`, so it outlives the
        // VM that references it.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| ProbeError::Kvm {
            op: "set user memory region",
            source,
        })?;
    }
    Ok(())
}

fn setup_protected_mode(vcpu: &VcpuFd) -> Result<(), ProbeError> {
    let mut sregs = vcpu.get_sregs().map_err(|source| ProbeError::Kvm {
        op: "get sregs",
        source,
    })?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 |= 1; // PE
    vcpu.set_sregs(&sregs).map_err(|source| ProbeError::Kvm {
        op: "set sregs",
        source,
    })
}

fn run_loop(vcpu: &mut VcpuFd, iterations: u32) -> Result<Duration, ProbeError> {
    let mut regs = vcpu.get_regs().map_err(|source| ProbeError::Kvm {
        op: "get regs",
        source,
    })?;
    regs.rip = CODE_ADDR;
    regs.rcx = u64::from(iterations);
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(|source| ProbeError::Kvm {
        op: "set regs",
        source,
    })?;
    let start = Instant::now();
    let exit = vcpu.run();
    let elapsed = start.elapsed();
    match exit {
        Ok(VcpuExit::Hlt) => {
            let after = vcpu.get_regs().map_err(|source| ProbeError::Kvm {
                op: "get regs",
                source,
            })?;
            if after.rcx & 0xffff_ffff != 0 {
                return Err(ProbeError::UnexpectedExit(format!(
                    "halted with ecx = {} (the loop did not run to the end)",
                    after.rcx & 0xffff_ffff
                )));
            }
            Ok(elapsed)
        }
        Ok(other) => Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
        Err(source) => Err(ProbeError::Kvm { op: "run", source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn trial(baseline_ns: u64, timed_ns: u64) -> ProbeTrial {
        ProbeTrial {
            iterations: PROBE_ITERATIONS,
            baseline_ns,
            timed_ns,
        }
    }

    #[test]
    fn a_baseline_slower_than_the_timed_run_is_inconclusive_not_hardware() {
        // The bug this guards against: `timed - baseline` saturating to 0
        // read as "0 ns per iteration, hardware speed".
        let t = trial(3_000_000, 2_900_000);
        assert_eq!(t.speed(), Ring0Speed::Inconclusive);
        assert_eq!(verdict(&[t; 5]).0, Ring0Speed::Inconclusive);
        // Equal is just as impossible, and so is a run that took no time.
        assert_eq!(trial(500, 500).speed(), Ring0Speed::Inconclusive);
        assert_eq!(trial(0, 0).speed(), Ring0Speed::Inconclusive);
    }

    #[test]
    fn the_figure_is_not_reduced_by_the_baseline() {
        // 20,000 iterations in 2 ms = 100 ns each, whatever the entry cost.
        let t = trial(1_900_000, 2_000_000);
        assert_eq!(t.ns_per_iteration(), 100.0);
        assert_eq!(t.speed(), Ring0Speed::Emulated);
        let fast = trial(10_000, 40_000); // 2 ns per iteration
        assert_eq!(fast.speed(), Ring0Speed::Hardware);
    }

    #[test]
    fn the_fastest_conclusive_trial_decides_given_enough_of_them() {
        let fast = trial(10_000, 40_000);
        let slow = trial(10_000, 30_000_000);
        let bad = trial(50_000, 40_000);
        // Noise (a preempted run) only slows a trial down: one fast trial
        // among slow ones is the truth.
        assert_eq!(verdict(&[slow, fast, slow]).0, Ring0Speed::Hardware);
        assert_eq!(verdict(&[slow, slow, slow]).0, Ring0Speed::Emulated);
        // Too few conclusive trials: inconclusive, even if one says hardware.
        let (speed, ns) = verdict(&[fast, bad, bad, bad, bad]);
        assert_eq!(speed, Ring0Speed::Inconclusive);
        assert_eq!(ns, Some(2.0));
        assert_eq!(verdict(&[]), (Ring0Speed::Inconclusive, None));
    }

    #[test]
    fn kvm_is_available_here() {
        if let Err(e) = kvm_available() {
            eprintln!("skipping: {e}");
            return;
        }
        let probe = measure_ring0().expect("ring-0 probe");
        eprintln!(
            "ring-0 probe: {:.1} ns/iteration over {} trials, verdict {:?}",
            probe.ns_per_iteration,
            probe.trials.len(),
            probe.speed
        );
        assert!(probe.trials.len() >= PROBE_TRIALS);
        assert!(probe
            .trials
            .iter()
            .all(|t| t.iterations == PROBE_ITERATIONS));
        assert_eq!(verdict(&probe.trials).0, probe.speed);
        assert_eq!(probe.at_hardware_speed, probe.speed == Ring0Speed::Hardware);
        if std::env::var_os("NOOK_EXPECT_EMULATED_RING0").is_some() {
            assert!(!probe.at_hardware_speed, "this host emulates ring 0");
        }
    }

    /// One long ring-0 loop timed in isolation: the reference the probe's
    /// verdicts are held against.
    fn reference_speed() -> Ring0Speed {
        let kvm = Kvm::new().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PROBE_MEM)]).unwrap();
        mem.write_slice(&[0x49u8, 0x75, 0xfd, 0xf4], GuestAddress(CODE_ADDR))
            .unwrap();
        let vm = kvm.create_vm().unwrap();
        register_memory(&vm, &mem).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        setup_protected_mode(&vcpu).unwrap();
        let iterations = 200_000;
        let t = ProbeTrial {
            iterations,
            baseline_ns: duration_ns(run_loop(&mut vcpu, 1).unwrap()),
            timed_ns: duration_ns(run_loop(&mut vcpu, iterations).unwrap()),
        };
        t.speed()
    }

    #[test]
    fn fifty_probes_on_busy_cores_never_claim_hardware_speed_that_is_not_there() {
        if let Err(e) = kvm_available() {
            eprintln!("skipping: {e}");
            return;
        }
        if reference_speed() != Ring0Speed::Emulated {
            eprintln!(
                "skipping: ring 0 runs at hardware speed on this host, so a hardware \
                 verdict would be the truth here"
            );
            return;
        }
        // Keep every core busy while probing: scheduling noise must only
        // ever make ring 0 look slower.
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let burners: Vec<_> = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        let verdicts: Vec<Ring0Speed> = (0..50)
            .map(|_| measure_ring0().expect("ring-0 probe").speed)
            .collect();
        stop.store(true, Ordering::Relaxed);
        for b in burners {
            b.join().unwrap();
        }
        eprintln!("verdicts under load: {verdicts:?}");
        assert!(
            !verdicts.contains(&Ring0Speed::Hardware),
            "a probe claimed hardware speed on a host that emulates ring 0: {verdicts:?}"
        );
    }

    #[test]
    fn unavailable_message_says_what_to_do() {
        let e = ProbeError::KvmUnavailable(kvm_ioctls::Error::new(libc::EACCES));
        assert_eq!(
            e.to_string(),
            "/dev/kvm is not accessible: add your user to the kvm group or use --engine qemu"
        );
    }
}
