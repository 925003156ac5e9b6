//! Booting: turns a [`KvmConfig`] into the [`MachineParts`] of a fresh VM,
//! then [`assemble`]s it:
//!
//! 1. validate the configuration, install the vCPU kick handler;
//! 2. make the virtio devices in their documented order (console, disks,
//!    rng, shares, net, balloon) and announce them with `virtio_mmio.device=` entries appended
//!    to the command line;
//! 3. allocate guest memory and write ACPI tables, kernel, initrd, command
//!    line, boot page tables and GDT into it;
//! 4. make the KVM VM around it ([`VmShell`]: memory slots, irqchip, PIT,
//!    vCPUs, irqfds, ioeventfds, threads);
//! 5. [`assemble`]: devices, vCPUs at the entry point, threads.

use std::fmt::Write as _;

use crate::arch::x86_64::acpi::write_acpi_tables;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::boot::{load_guest, BootSetup, GuestImage};
use crate::arch::x86_64::layout::{VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::arch::x86_64::regs::write_boot_tables;
use crate::assemble::{assemble, DevicePart, MachineParts, PhaseTimer, SerialPart, VcpuPart};
use crate::config::KvmConfig;
use crate::devices::virtio::balloon::{Balloon, BalloonControl};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::persist::HostBackends;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::error::VmmError;
use crate::machine::KvmVm;
use crate::vstate::memory::create_guest_memory;
use crate::vstate::shell::{ShellLayout, VmShell};
use crate::vstate::vcpu::install_kick_handler;

/// Builds and starts the VM (see the module docs for the order).
pub(crate) fn build(cfg: KvmConfig) -> Result<KvmVm, VmmError> {
    let mut timer = PhaseTimer::new();
    cfg.validate()?;
    install_kick_handler()?;
    let memory_bytes = cfg.memory_bytes();
    let KvmConfig {
        kernel,
        initrd,
        cmdline: user_cmdline,
        vcpus,
        serial,
        console,
        disks,
        rng,
        shares,
        net,
        balloon,
        mmio_hook,
        ..
    } = cfg;
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(stream) = console {
        let c = Console::new(Some(stream)).map_err(|source| VmmError::Device {
            what: "virtio-console stream".into(),
            source,
        })?;
        devices.push(Box::new(c));
    }
    for (i, d) in disks.iter().enumerate() {
        let id = if d.id.is_empty() {
            format!("nook-disk{i}")
        } else {
            d.id.clone()
        };
        devices.push(Box::new(Block::open(&d.path, d.read_only, &id)?));
    }
    if rng {
        devices.push(Box::new(Rng::new()));
    }
    let vmm_reach = shares.iter().filter_map(|s| s.server.reach()).collect();
    for s in shares {
        devices.push(Box::new(Fs::new(&s.tag, s.server)));
    }
    if let Some(n) = net {
        let nic = Net::new(n.mac, Some(n.stream)).map_err(|source| VmmError::Device {
            what: "virtio-net stream".into(),
            source,
        })?;
        devices.push(Box::new(nic));
    }
    let balloon = match balloon {
        Some(config) => {
            let control = std::sync::Arc::new(BalloonControl::default());
            let device =
                Balloon::new(config, control.clone()).map_err(|source| VmmError::Device {
                    what: "virtio-balloon statistics timer".into(),
                    source,
                })?;
            devices.push(Box::new(device));
            Some(control)
        }
        None => None,
    };

    let mut cmdline = user_cmdline.trim().to_string();
    for (i, _) in devices.iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        let _ = write!(
            cmdline,
            "virtio_mmio.device=4K@{base:#x}:{}",
            VIRTIO_IRQS[i]
        );
    }

    let layout = ShellLayout {
        memory_bytes,
        vcpus,
        queues: devices.iter().map(|d| d.queue_max_sizes().len()).collect(),
    };
    let mem = create_guest_memory(memory_bytes)?;
    timer.mark("guest memory");
    let guest = GuestImage {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: &cmdline,
        memory_bytes,
        rsdp: 0,
    };
    let boot = load(&mem, guest, vcpus)?;
    timer.mark("load guest");
    let shell = VmShell::create(None, mem.clone(), layout)?;
    timer.mark("kvm vm");

    let parts = MachineParts {
        shell,
        backing: None,
        vm_state: None,
        serial: SerialPart::Fresh,
        serial_sink: serial,
        devices: devices.into_iter().map(DevicePart::Fresh).collect(),
        backends: HostBackends {
            balloon,
            ..HostBackends::default()
        },
        vcpus: VcpuPart::Boot {
            count: vcpus,
            mode: boot.mode,
            entry: boot.entry,
        },
        boot,
        cmdline,
        mmio_hook,
        vmm_reach,
    };
    assemble(parts, timer)
}

/// Writes ACPI tables, then the kernel, initrd and command line, then the
/// boot page tables and GDT into `mem`.
fn load(
    mem: &GuestMemoryMmap,
    mut guest: GuestImage<'_>,
    vcpus: u8,
) -> Result<BootSetup, VmmError> {
    guest.rsdp = write_acpi_tables(mem, vcpus)?;
    let boot = load_guest(mem, &guest)?;
    write_boot_tables(mem, boot.mode)?;
    Ok(boot)
}
