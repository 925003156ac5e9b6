//! The state section of a snapshot: [`MicrovmState`].

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::boot::BootSetup;
use crate::arch::x86_64::regs::EntryMode;
use crate::devices::legacy::persist::SerialDeviceState;
use crate::devices::virtio::mmio::MmioTransportState;
use crate::devices::virtio::persist::SavedDevice;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;
use crate::KernelFormat;

/// Everything about a paused VM except its memory contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicrovmState {
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Irqchip, PIT, clock.
    pub vm: VmState,
    /// Guest RAM regions and where their bytes are in the memory section.
    pub memory: Vec<MemoryRegionState>,
    /// COM1.
    pub serial: SerialDeviceState,
    /// Virtio devices in bus order (device `i` is at
    /// `VIRTIO_MMIO_BASE + 0x1000 * i` on interrupt line `VIRTIO_IRQS[i]`).
    pub devices: Vec<VirtioSlotState>,
    /// How the VM was booted (reported by restored VMs).
    pub boot: BootState,
    /// The kernel command line the guest booted with.
    pub cmdline: String,
}

/// One guest RAM region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
    /// Offset of its bytes from the start of the memory section.
    pub offset: u64,
}

/// A virtio-mmio slot: transport registers plus the device behind them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioSlotState {
    /// Transport.
    pub transport: MmioTransportState,
    /// Device: its type and its own encoded state.
    pub device: SavedDevice,
}

/// [`BootSetup`] in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Entry point.
    pub entry: u64,
    /// Entered in long mode (else 32-bit PVH).
    pub long_mode: bool,
    /// Kernel image format: 0 bzImage, 1 PVH ELF, 2 plain 64-bit ELF,
    /// 3 bzImage entered through PVH.
    pub format: u8,
}

impl BootState {
    /// Encodes `b`.
    pub fn save(b: &BootSetup) -> Self {
        Self {
            entry: b.entry,
            long_mode: b.mode == EntryMode::Long64,
            format: match b.format {
                KernelFormat::BzImage => 0,
                KernelFormat::PvhElf => 1,
                KernelFormat::Elf64 => 2,
                // A bzImage entered through PVH (the loader's fast path).
                #[allow(unreachable_patterns)]
                _ => 3,
            },
        }
    }

    /// Decodes into a [`BootSetup`] (only reported, never acted on: a
    /// bzImage entered through PVH reads as a bzImage, unknown formats as
    /// plain ELF).
    pub fn restore(&self) -> BootSetup {
        BootSetup {
            entry: self.entry,
            mode: if self.long_mode {
                EntryMode::Long64
            } else {
                EntryMode::Pvh32
            },
            format: match self.format {
                0 | 3 => KernelFormat::BzImage,
                1 => KernelFormat::PvhElf,
                _ => KernelFormat::Elf64,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state_round_trips() {
        for (format, mode) in [
            (KernelFormat::BzImage, EntryMode::Long64),
            (KernelFormat::PvhElf, EntryMode::Pvh32),
            (KernelFormat::Elf64, EntryMode::Long64),
        ] {
            let b = BootSetup {
                entry: 0x1234,
                mode,
                format,
            };
            let s = BootState::save(&b);
            let bytes = postcard::to_allocvec(&s).unwrap();
            let back: BootState = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, s);
            let r = back.restore();
            assert_eq!((r.entry, r.mode, r.format), (b.entry, b.mode, b.format));
        }
    }

    #[test]
    fn memory_region_state_round_trips() {
        let r = MemoryRegionState {
            guest_addr: 0x1_0000_0000,
            len: 1 << 30,
            offset: 3 << 30,
        };
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(
            postcard::from_bytes::<MemoryRegionState>(&bytes).unwrap(),
            r
        );
    }
}
