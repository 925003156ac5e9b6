//! A nook snapshot of a synthetic kvm-engine guest, for pool tests and
//! benchmarks on hosts where KVM cannot boot a real kernel to its agent:
//! a 64-bit ELF that idles (`cli; hlt` in a loop) with the virtio-console
//! a restore connects the agent channel to, snapshotted by the VMM and
//! wrapped in a snapshot directory with a manifest. The "agent" never
//! answers: what it serves is the pool's own work (restore, hand-out,
//! release, refill).
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::Path;

use nook::{EngineId, SnapshotManifest};
use nook_vmm::{AfterSnapshot, KvmConfig, KvmVm};

const CODE: u64 = 0x20_0000;

/// A plain ELF64 executable with the code at [`CODE`].
fn idle_elf() -> Vec<u8> {
    // cli; l: hlt; jmp l
    let code: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];
    let mut e = vec![0u8; 0x78];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&CODE.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&0x40u16.to_le_bytes());
    e[54..56].copy_from_slice(&0x38u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 0x40;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    e[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
    e[ph + 16..ph + 24].copy_from_slice(&CODE.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&CODE.to_le_bytes());
    e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}

/// Writes the snapshot directory `dir` (which must not exist) of an idle
/// guest with `memory_mib` of RAM; `None` (with the reason printed) where
/// `/dev/kvm` cannot be used.
pub fn idle_kvm_snapshot(dir: &Path, memory_mib: u32) -> Option<()> {
    if let Err(e) = nook_vmm::probe::kvm_available() {
        eprintln!("skipping: {e}");
        return None;
    }
    let engine = dir.join("engine");
    std::fs::create_dir_all(&engine).unwrap();
    let kernel = dir.join("idle.elf");
    std::fs::write(&kernel, idle_elf()).unwrap();
    let (_host, guest) = UnixStream::pair().unwrap();
    let mut cfg = KvmConfig::new(&kernel);
    cfg.memory_mib = memory_mib;
    cfg.console = Some(guest);
    cfg.rng = true;
    let mut vm = KvmVm::start(cfg).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    vm.snapshot(&engine.join("vm.snap"), AfterSnapshot::Stop)
        .unwrap();
    drop(vm);
    let manifest = SnapshotManifest {
        // The format of nook.json this nook reads (`Snapshot::open`).
        format: 2,
        engine: EngineId::Kvm,
        memory_mib,
        vcpus: 1,
        kernel_release: "synthetic".into(),
        agent_protocol: nook_proto::PROTOCOL_VERSION,
        agent_version: "none".into(),
        agent_features: Vec::new(),
        created: 0,
        net: None,
        shares: Vec::new(),
        balloon: None,
        next_stream: 1,
    };
    std::fs::write(
        dir.join("nook.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    Some(())
}
