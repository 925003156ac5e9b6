//! A KVM VM made ahead of time ([`VmShell`]): guest RAM registered as
//! memory slots before the irqchip and PIT exist (the cheap order), the
//! vCPUs, the irqfds and ioeventfds of its devices, and the threads that
//! will run it. What costs time when a VM is made — SRCU grace periods in
//! the kernel for the slots, the irqchip's routing and the PIT, thread
//! creation and scheduling — is done here, so that booting or restoring
//! into a shell only loads state.
//!
//! A shell that ran a VM can run another with the same [`ShellLayout`]
//! ([`VmShell::reset`]): every piece of state a restore loads (vCPU
//! registers, MSRs, LAPIC, events, irqchip, PIT, clock, guest RAM) is
//! overwritten, and the vCPUs stay on their threads. That spares the slow
//! release of a KVM VM (the irqchip and PIT wait for grace periods as they
//! are torn down) as well as the set-up.

use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::memory::reset_anonymous;
use super::vcpu::create_vcpu;
use super::vm::{create_vm, VmFds};
use super::worker::Worker;
use crate::arch::x86_64::layout::{COM1_IRQ, VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::assemble::new_eventfd;
use crate::devices::virtio::mmio::QUEUE_NOTIFY;
use crate::error::VmmError;

/// What a shell is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShellLayout {
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Number of queues of the virtio device in each slot, in bus order.
    pub queues: Vec<usize>,
}

/// Interrupt lines and queue notifications registered with KVM once.
#[derive(Debug)]
pub(crate) struct Wiring {
    /// COM1's irqfd.
    pub com1: EventFd,
    /// The irqfd of each virtio slot.
    pub lines: Vec<EventFd>,
    /// The ioeventfds of each virtio slot, one per queue.
    pub notify: Vec<Vec<EventFd>>,
}

impl Wiring {
    fn register(vm: &VmFd, queues: &[usize]) -> Result<Wiring, VmmError> {
        let irqfd = |gsi: u32, what: &str| {
            let evt = new_eventfd(what)?;
            vm.register_irqfd(&evt, gsi).map_err(|e| VmmError::Device {
                what: format!("{what} irqfd (line {gsi})"),
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
            Ok::<_, VmmError>(evt)
        };
        let com1 = irqfd(COM1_IRQ, "serial")?;
        let mut lines = Vec::with_capacity(queues.len());
        let mut notify = Vec::with_capacity(queues.len());
        for (i, &n) in queues.iter().enumerate() {
            let name = format!("virtio slot {i}");
            let line = VIRTIO_IRQS.get(i).ok_or(VmmError::Config(
                crate::config::ConfigError::TooManyDevices(queues.len()),
            ))?;
            lines.push(irqfd(*line, &name)?);
            let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
            let mut evts = Vec::with_capacity(n);
            for q in 0..n {
                let evt = new_eventfd(&name)?;
                vm.register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                    .map_err(|e| VmmError::Device {
                        what: format!("{name} queue {q} ioeventfd"),
                        source: std::io::Error::from_raw_os_error(e.errno()),
                    })?;
                evts.push(evt);
            }
            notify.push(evts);
        }
        Ok(Wiring {
            com1,
            lines,
            notify,
        })
    }
}

/// A KVM VM ready to run a guest of its [`ShellLayout`].
#[derive(Debug)]
pub(crate) struct VmShell {
    /// `/dev/kvm` and the VM: memory slots, TSS, irqchip, PIT.
    pub fds: VmFds,
    /// Guest RAM; its host addresses are what the memory slots map.
    pub ram: GuestMemoryMmap,
    /// The vCPUs, in index order (`None` while a VM runs them, or if one
    /// was lost).
    pub vcpus: Vec<Option<VcpuFd>>,
    /// `nook-vcpu{N}`: vCPU N always runs on thread N.
    pub vcpu_workers: Vec<Worker>,
    /// `nook-vmm`: the device event loop.
    pub events: Worker,
    /// What the `nook-vmm` thread was confined to by its last VM
    /// (confinement only narrows: a VM that needs other paths gets a new
    /// thread).
    pub events_confinement: Option<nook_seccomp::ThreadConfinement>,
    pub wiring: Wiring,
    pub layout: ShellLayout,
}

impl VmShell {
    /// Makes a shell for `layout` around `ram` (guest RAM of
    /// `layout.memory_bytes`), on `kvm` if given (else `/dev/kvm` is
    /// opened).
    pub(crate) fn create(
        kvm: Option<Kvm>,
        ram: GuestMemoryMmap,
        layout: ShellLayout,
    ) -> Result<VmShell, VmmError> {
        let fds = create_vm(kvm, &ram)?;
        let wiring = Wiring::register(&fds.fd, &layout.queues)?;
        let mut vcpus = Vec::with_capacity(usize::from(layout.vcpus));
        let mut vcpu_workers = Vec::with_capacity(usize::from(layout.vcpus));
        for index in 0..layout.vcpus {
            vcpus.push(Some(create_vcpu(&fds.fd, index)?));
            vcpu_workers.push(Worker::new(&format!("nook-vcpu{index}")));
        }
        let events = Worker::new("nook-vmm");
        Ok(VmShell {
            fds,
            ram,
            vcpus,
            vcpu_workers,
            events,
            events_confinement: None,
            wiring,
            layout,
        })
    }

    /// Starts the shell's threads now (for a shell made ahead: a restore
    /// then waits for no thread creation).
    pub(crate) fn start_threads(&mut self) -> Result<(), VmmError> {
        for w in self.vcpu_workers.iter_mut().chain([&mut self.events]) {
            w.start().map_err(|source| VmmError::Spawn {
                name: format!("{w:?}"),
                source,
            })?;
        }
        Ok(())
    }

    /// Makes sure the `nook-vmm` thread can be confined to `c`: a thread
    /// confined to something else by an earlier VM is replaced by a new one
    /// (its job queue is empty between VMs, so dropping it joins at once).
    pub(crate) fn confine_events(&mut self, c: nook_seccomp::ThreadConfinement) {
        if self
            .events_confinement
            .as_ref()
            .is_some_and(|old| *old != c)
        {
            self.events = Worker::new("nook-vmm");
        }
        self.events_confinement = Some(c);
    }

    /// Makes a shell that ran a VM ready for the next: guest RAM back to
    /// zero pages (the last guest's pages and any snapshot file mapped
    /// there are released), queue notifications drained. `false` if it
    /// cannot run another VM (a vCPU was lost with a failed thread).
    pub(crate) fn reset(&mut self) -> bool {
        if self.vcpus.iter().any(Option::is_none) {
            return false;
        }
        if let Err(e) = reset_anonymous(&self.ram) {
            tracing::debug!("vmm: cannot reset guest memory of a vm for reuse: {e}");
            return false;
        }
        for evt in self.wiring.notify.iter().flatten() {
            let _ = evt.read();
        }
        true
    }
}
