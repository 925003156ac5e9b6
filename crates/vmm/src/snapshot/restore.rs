//! Restoring a snapshot: [`KvmVm::restore`], in this order:
//!
//! 1. read and check the header and state (magic, version, checksums,
//!    host compatibility);
//! 2. map the memory section `MAP_PRIVATE` (copy-on-write);
//! 3. create the KVM VM: memory slots first, then irqchip and PIT (each
//!    slot registered after them would wait for an SRCU grace period);
//! 4. restore PIT, clock and irqchip;
//! 5. rebuild devices from their state: COM1 on the caller's sink, virtio
//!    transports with new irqfds and ioeventfds, the console on the
//!    caller's stream, disks reopened;
//! 6. create the vCPUs and restore each one's state;
//! 7. start the event loop and the vCPU threads, then re-raise pending
//!    virtio interrupts and re-run every active queue (a notification or
//!    an interrupt in flight at snapshot time is not part of any state).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm};

use super::error::KvmSnapshotError;
use super::format::{parse_snapshot, HostCompat, SnapshotFormatError, SnapshotHeader, HEADER_SIZE};
use super::handles::SnapshotHandles;
use super::memory::map_memory;
use super::state::MicrovmState;
use crate::arch::x86_64::layout::{
    COM1_IRQ, IDENTITY_MAP_ADDR, TSS_ADDR, VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::builder::{
    clone_eventfd, irqfd, new_eventfd, open_serial_sink, port_io_bus, start_threads,
};
use crate::config::{SerialSink, MAX_VCPUS};
use crate::devices::bus::Bus;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::persist::{RestoreContext, VirtioDeviceState};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::machine::KvmVm;
use crate::vstate::exit::ExitState;
use crate::vstate::memory::register_guest_memory;
use crate::vstate::pause::PauseControl;
use crate::vstate::vcpu::install_kick_handler;
use crate::vstate::vm::{VmCreateError, VmFds};

/// How to reconnect a restored VM to the host.
#[derive(Debug)]
pub struct KvmRestoreConfig {
    /// Where COM1 output goes.
    pub serial: SerialSink,
    /// New backend of the virtio-console port, if the snapshot has one
    /// (`None`: output is discarded, no input).
    pub console: Option<UnixStream>,
    /// Disk images to use instead of the snapshot's, in device order;
    /// empty: reopen the paths recorded in the snapshot. Each must have
    /// the recorded size. VMs restored from one snapshot that write to a
    /// disk need their own copies.
    pub disks: Vec<PathBuf>,
}

impl Default for KvmRestoreConfig {
    fn default() -> Self {
        Self {
            serial: SerialSink::Null,
            console: None,
            disks: Vec::new(),
        }
    }
}

/// Reads and checks header and state of the snapshot at `path`.
pub fn read_snapshot(
    path: &Path,
) -> Result<(File, SnapshotHeader, MicrovmState), KvmSnapshotError> {
    let io = |op| {
        move |source| KvmSnapshotError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let format = |source| KvmSnapshotError::Format {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io("open"))?;
    let len = file.metadata().map_err(io("stat"))?.len();
    let mut head = vec![0u8; HEADER_SIZE.min(len as usize)];
    file.read_exact_at(&mut head, 0).map_err(io("read"))?;
    let header = SnapshotHeader::decode(&head).map_err(format)?;
    let state_end = header.state_offset + header.state_len;
    if len < header.file_len() {
        return Err(format(SnapshotFormatError::Truncated {
            needed: header.file_len(),
            actual: len,
        }));
    }
    let mut bytes = vec![0u8; state_end as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io("read"))?;
    let (header, state) = parse_snapshot(&bytes, len).map_err(format)?;
    Ok((file, header, state))
}

impl KvmVm {
    /// Restores the snapshot at `path` as a new running VM (see the module
    /// docs for the steps). Guest memory is mapped copy-on-write from the
    /// file: any number of VMs can be restored from one snapshot, each
    /// seeing only its own writes, and the file is never written. The file
    /// must not be truncated or rewritten in place while they run (taking
    /// a new snapshot to the same path replaces it, which is fine).
    pub fn restore(path: &Path, cfg: KvmRestoreConfig) -> Result<KvmVm, VmmError> {
        let mut timer = Phases::new();
        install_kick_handler()?;
        let (file, header, state) = read_snapshot(path)?;
        timer.mark("read state");
        let kvm = Kvm::new().map_err(VmCreateError::KvmUnavailable)?;
        let host = HostCompat::current(&kvm);
        if let Some((what, snapshot, host)) = header.compat.mismatch(&host) {
            return Err(KvmSnapshotError::Incompatible {
                what,
                snapshot,
                host,
            }
            .into());
        }
        check_machine(&state, &cfg)?;
        let mem = map_memory(
            Arc::new(file),
            header.mem_offset,
            header.mem_len,
            &state.memory,
        )
        .map_err(KvmSnapshotError::from)?;
        timer.mark("map memory");

        let kvm_err = |op| move |source| VmCreateError::Kvm { op, source };
        let fd = kvm.create_vm().map_err(kvm_err("create vm"))?;
        timer.mark("kvm create vm");
        register_guest_memory(&fd, &mem).map_err(VmCreateError::from)?;
        timer.mark("memory slots");
        fd.set_tss_address(TSS_ADDR as usize)
            .map_err(kvm_err("set tss address"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(kvm_err("set identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("create irqchip"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create pit"))?;
        timer.mark("irqchip and pit");
        state.vm.restore(&fd).map_err(KvmSnapshotError::from)?;
        timer.mark("vm state");

        // Port I/O devices.
        let out = open_serial_sink(cfg.serial)?;
        let com1 = SerialDevice::restore(&state.serial, irqfd(&fd, COM1_IRQ, "serial")?, out)
            .map_err(KvmSnapshotError::from)?;
        let com1 = Arc::new(Mutex::new(com1));
        let pio = port_io_bus(&com1)?;

        // Virtio devices, in their saved slots.
        let mut mmio = Bus::default();
        let activated = new_eventfd("device activation")?;
        let mut transports = Vec::new();
        let mut queue_evts = Vec::new();
        let mut kicks = Vec::new();
        let mut irqs = Vec::new();
        let mut console = cfg.console;
        let mut disks = cfg.disks.into_iter();
        for (i, slot) in state.devices.iter().enumerate() {
            let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
            let name = format!("virtio slot {i}");
            let irq = Arc::new(IrqTrigger::new(irqfd(&fd, VIRTIO_IRQS[i], &name)?));
            let ctx = slot.transport.active.then(|| RestoreContext {
                mem: mem.clone(),
                interrupt: irq.clone(),
            });
            let dev_err = |source| KvmSnapshotError::Device { index: i, source };
            let device: Box<dyn VirtioDevice> = match &slot.device {
                VirtioDeviceState::Console(s) => {
                    Box::new(Console::restore(s, console.take(), ctx).map_err(dev_err)?)
                }
                VirtioDeviceState::Block(s) => {
                    let path = disks.next();
                    Box::new(Block::restore(s, path.as_deref(), ctx).map_err(dev_err)?)
                }
                VirtioDeviceState::Rng(s) => Box::new(Rng::restore(s, ctx).map_err(dev_err)?),
            };
            let mut notify = Vec::new();
            for q in 0..device.queue_max_sizes().len() {
                let evt = new_eventfd(&name)?;
                fd.register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                    .map_err(|e| VmmError::Device {
                        what: format!("{name} queue {q} ioeventfd"),
                        source: std::io::Error::from_raw_os_error(e.errno()),
                    })?;
                notify.push(clone_eventfd(&evt, &name)?);
                if slot.transport.active {
                    kicks.push(clone_eventfd(&evt, &name)?);
                }
                queue_evts.push((i, q as u16, evt));
            }
            let transport = MmioTransport::restore(
                device,
                mem.clone(),
                irq.clone(),
                notify,
                Some(clone_eventfd(&activated, "device activation")?),
                &slot.transport,
            )
            .map_err(dev_err)?;
            let transport = Arc::new(Mutex::new(transport));
            mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
            transports.push(transport);
            irqs.push(irq);
        }
        timer.mark("devices");

        let mut vcpu_fds = Vec::with_capacity(state.vcpus.len());
        for (index, s) in state.vcpus.iter().enumerate() {
            let vcpu = fd
                .create_vcpu(index as u64)
                .map_err(|e| crate::vstate::vcpu::VcpuError::Create(index as u8, e))?;
            let refused = s.restore(&vcpu).map_err(KvmSnapshotError::from)?;
            if refused > 0 {
                tracing::debug!("vmm: restore: vcpu{index}: {refused} msrs refused");
            }
            vcpu_fds.push(vcpu);
        }
        timer.mark("vcpus");

        let exit = Arc::new(ExitState::new());
        let event_stop = new_eventfd("event loop stop")?;
        let event_loop = EventLoop::new(
            clone_eventfd(&event_stop, "event loop stop")?,
            clone_eventfd(&activated, "device activation")?,
            transports.clone(),
            queue_evts,
        )
        .map_err(|source| VmmError::Device {
            what: "event loop epoll".into(),
            source,
        })?;
        let pause = Arc::new(PauseControl::default());
        let vcpus = state.vcpus.len() as u8;
        let mut vm = KvmVm {
            exit: exit.clone(),
            vcpu_threads: Vec::new(),
            event_thread: None,
            event_stop,
            kvm_vm: None,
            mem: mem.clone(),
            boot: state.boot.restore(),
            cmdline: state.cmdline.clone(),
            phases: Vec::new(),
            snap: SnapshotHandles {
                pause: pause.clone(),
                serial: com1,
                transports,
                vcpus,
            },
        };
        start_threads(&mut vm, event_loop, vcpu_fds, pio, mmio, &exit, &pause)?;
        // Backends of active devices, queued work, pending interrupts.
        let _ = activated.write(1);
        for k in &kicks {
            let _ = k.write(1);
        }
        for irq in &irqs {
            irq.retrigger_pending();
        }
        vm.kvm_vm = Some(VmFds {
            kvm,
            fd,
            supported_cpuid: CpuId::new(0).map_err(|_| KvmSnapshotError::Machine("cpuid"))?,
        });
        timer.mark("threads");
        vm.phases = timer.phases;
        Ok(vm)
    }
}

/// Checks what the state asks for against what this VMM can build and
/// what the caller gave.
fn check_machine(state: &MicrovmState, cfg: &KvmRestoreConfig) -> Result<(), KvmSnapshotError> {
    let n = state.vcpus.len();
    if n == 0 || n > usize::from(MAX_VCPUS) {
        return Err(KvmSnapshotError::Machine("vcpu count"));
    }
    if state
        .vcpus
        .iter()
        .enumerate()
        .any(|(i, v)| usize::from(v.index) != i)
    {
        return Err(KvmSnapshotError::Machine("vcpu order"));
    }
    if state.devices.len() > VIRTIO_IRQS.len() {
        return Err(KvmSnapshotError::Machine("too many virtio devices"));
    }
    let disks = state
        .devices
        .iter()
        .filter(|d| matches!(d.device, VirtioDeviceState::Block(_)))
        .count();
    if !cfg.disks.is_empty() && cfg.disks.len() != disks {
        return Err(KvmSnapshotError::Config(
            "disks must be empty or list every disk of the snapshot",
        ));
    }
    let consoles = state
        .devices
        .iter()
        .filter(|d| matches!(d.device, VirtioDeviceState::Console(_)))
        .count();
    if cfg.console.is_some() && consoles == 0 {
        return Err(KvmSnapshotError::Config(
            "a console stream was given but the snapshot has no console",
        ));
    }
    Ok(())
}

/// Durations of the restore steps, for [`KvmVm::start_phases`].
struct Phases {
    last: Instant,
    phases: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }
}
