//! `nook boot`: boot a kernel with no agent, copy its serial console to
//! stdout, and exit with a code that says how the guest ended.
//!
//! | exit code | the guest ... |
//! |---|---|
//! | 0   | powered off |
//! | 3   | reset the machine (i8042 `0xfe`, ACPI reset; on qemu also a triple fault) |
//! | 4   | triple-faulted (kvm only: QEMU reports a triple fault as a reset) |
//! | 124 | was still running after `--timeout` (nook stopped it) |
//! | 125 | could not be booted, or the engine failed |
//!
//! The work is the library's (`nook::boot_bare`); this parses arguments
//! and maps the ending to the exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nook::{BareConfig, EngineKind};

use crate::exit::{report, NOOK_FAILED};

/// Exit codes, as shown by `nook boot --help`.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 the guest powered off; 3 it reset the machine \
(on qemu also a triple fault); 4 a vCPU triple-faulted (kvm); 124 --timeout passed and nook \
stopped the guest; 125 the guest could not be booted or the engine failed.";

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootEngine {
    /// kvm where it runs guest kernels at hardware speed, else qemu.
    Auto,
    /// nook's own VMM.
    Kvm,
    /// QEMU microvm (KVM-accelerated at hardware speed, else TCG).
    Qemu,
}

#[derive(Args, Debug)]
pub struct BootArgs {
    /// Kernel to boot: bzImage, PVH ELF (vmlinux) or, on kvm, a plain 64-bit ELF.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        long,
        default_value = "console=ttyS0 reboot=k panic=-1",
        value_name = "STR"
    )]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long = "memory", default_value_t = 256, value_name = "MIB", value_parser = crate::args::parse_memory_mib)]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long = "cpus", default_value_t = 1, value_name = "N", value_parser = crate::args::parse_vcpus)]
    pub vcpus: u8,
    /// Engine.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: BootEngine,
    /// Stop the guest after this many seconds; nook then exits 124.
    #[arg(long, value_name = "SECS", value_parser = crate::args::parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,
}

pub fn boot(args: BootArgs) -> i32 {
    let timeout = args.timeout;
    let engine = match args.engine {
        BootEngine::Auto => EngineKind::Auto,
        BootEngine::Kvm => EngineKind::Kvm,
        BootEngine::Qemu => EngineKind::Qemu,
    };
    crate::args::check_vcpus(args.vcpus, engine);
    let cfg = BareConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        engine,
        timeout,
        home: nook::default_home(),
    };
    match nook::boot_bare(&cfg) {
        // The process's work ends with the VM: exit now, leaving the VM's
        // teardown to process exit.
        Ok(done) => {
            let code = done.ending.exit_code();
            done.exit_process(code)
        }
        Err(e) => {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            report(&e);
            NOOK_FAILED
        }
    }
}
