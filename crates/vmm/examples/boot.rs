//! Boots a kernel with serial on stdout: `boot KERNEL [CMDLINE] [MEM_MIB] [SECONDS]`.
use std::time::Duration;

use nook_vmm::{KvmConfig, KvmVm, SerialSink};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = args
        .next()
        .ok_or("usage: boot KERNEL [CMDLINE] [MEM_MIB] [SECONDS]")?;
    let mut cfg = KvmConfig::new(kernel);
    cfg.cmdline = args
        .next()
        .unwrap_or_else(|| "earlyprintk=ttyS0 console=ttyS0".into());
    cfg.memory_mib = args.next().map(|m| m.parse()).transpose()?.unwrap_or(256);
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    cfg.serial = SerialSink::Stdout;
    let mut vm = KvmVm::start(cfg)?;
    eprintln!("{:?}", vm.boot_setup());
    let r = vm.wait_timeout(Duration::from_secs(secs))?;
    eprintln!("\nexit: {r:?}");
    Ok(())
}
