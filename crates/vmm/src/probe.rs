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
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// A probe loop iteration slower than this (nanoseconds) means ring 0 is not
/// running at hardware speed.
///
/// One iteration is two instructions (`dec ecx; jnz`). Hardware KVM runs it
/// in about a nanosecond; a software-emulated ring 0 (~0.5M instructions/s)
/// takes about 4000 ns. 100 ns leaves a wide margin on both sides.
pub const HARDWARE_SPEED_THRESHOLD_NS: f64 = 100.0;

/// Iterations of the timed ring-0 loop: microseconds on hardware, ~15 ms
/// when emulated.
pub const PROBE_ITERATIONS: u32 = 4000;

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

/// Result of timing a ring-0 loop in a throwaway VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ring0Probe {
    /// Loop iterations executed (two instructions each).
    pub iterations: u32,
    /// Wall time of the loop, without the fixed cost of entering the guest.
    pub elapsed: Duration,
    /// `elapsed / iterations`, in nanoseconds.
    pub ns_per_iteration: f64,
    /// Whether `ns_per_iteration` is below [`HARDWARE_SPEED_THRESHOLD_NS`].
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

/// Times [`PROBE_ITERATIONS`] iterations of a ring-0 loop in a throwaway VM.
///
/// The guest runs in flat 32-bit protected mode: `l: dec ecx; jnz l; hlt`.
/// A first run with `ecx = 1` measures the fixed cost of entering and
/// leaving the guest, which is subtracted from the timed run.
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

    let baseline = run_loop(&mut vcpu, 1)?;
    let timed = run_loop(&mut vcpu, PROBE_ITERATIONS)?;
    let elapsed = timed.saturating_sub(baseline);
    let ns_per_iteration = elapsed.as_nanos() as f64 / f64::from(PROBE_ITERATIONS);
    Ok(Ring0Probe {
        iterations: PROBE_ITERATIONS,
        elapsed,
        ns_per_iteration,
        at_hardware_speed: ns_per_iteration < HARDWARE_SPEED_THRESHOLD_NS,
    })
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
        Ok(VcpuExit::Hlt) => Ok(elapsed),
        Ok(other) => Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
        Err(source) => Err(ProbeError::Kvm { op: "run", source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_is_available_here() {
        if let Err(e) = kvm_available() {
            eprintln!("skipping: {e}");
            return;
        }
        let probe = measure_ring0().expect("ring-0 probe");
        eprintln!(
            "ring-0 probe: {} iterations in {:?} = {:.1} ns/iteration, hardware speed: {}",
            probe.iterations, probe.elapsed, probe.ns_per_iteration, probe.at_hardware_speed
        );
        assert_eq!(probe.iterations, PROBE_ITERATIONS);
        assert!(probe.ns_per_iteration > 0.0);
        assert_eq!(
            probe.at_hardware_speed,
            probe.ns_per_iteration < HARDWARE_SPEED_THRESHOLD_NS
        );
        if std::env::var_os("NOOK_EXPECT_EMULATED_RING0").is_some() {
            assert!(!probe.at_hardware_speed, "this host emulates ring 0");
        }
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
