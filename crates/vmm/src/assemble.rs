//! Assembling a VM from its parts: the one place where a boot
//! ([`crate::builder`]) and a restore ([`crate::snapshot`]) meet. Both
//! describe the machine as [`MachineParts`] (fresh or saved), and
//! [`assemble`] turns them into a running [`KvmVm`] in this order:
//!
//! 1. the KVM VM is a [`VmShell`] the caller made or took ready-made:
//!    memory slots, irqchip and PIT, vCPUs, irqfds and ioeventfds, threads;
//! 2. saved PIT, clock and irqchip state, if any;
//! 3. COM1 (fresh or restored) on the caller's sink, the i8042 and the
//!    ACPI power ports on the port bus;
//! 4. virtio transports on the MMIO bus, on the shell's irqfd and
//!    ioeventfds of their slot; saved devices are restored by their own
//!    [`Persist`](crate::snapshot::persist::Persist) code, reconnected to
//!    the caller's [`HostBackends`];
//! 5. vCPUs: configured for the boot entry, or restored from their state;
//! 6. the event loop on the shell's `nook-vmm` thread, then each vCPU's
//!    run loop on its `nook-vcpu{N}` thread;
//! 7. for a restore: re-raise pending virtio interrupts and re-run every
//!    active queue (a notification or an interrupt in flight at snapshot
//!    time is not part of any state).
//!
//! Any failure after threads exist goes through [`KvmVm`]'s drop, which stops
//! and joins them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use nook_seccomp::{ThreadConfinement, ThreadFilter};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::boot::BootSetup;
use crate::arch::x86_64::layout::{
    COM1_PORT, I8042_CMD_PORT, I8042_DATA_PORT, SLEEP_CONTROL_PORT, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE,
};
use crate::arch::x86_64::regs::EntryMode;
use crate::config::{MmioHook, SerialSink};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::persist::{SerialArgs, SerialDeviceState};
use crate::devices::legacy::power::AcpiPower;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportArgs};
use crate::devices::virtio::persist::{restore_saved, HostBackends, RestoreContext};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::machine::KvmVm;
use crate::snapshot::memory::MemoryBacking;
use crate::snapshot::persist::Persist;
use crate::snapshot::state::VirtioSlotState;
use crate::snapshot::{KvmSnapshotError, SnapshotHandles};
use crate::vstate::exit::{ExitReason, ExitState, Outcome};
use crate::vstate::pause::PauseControl;
use crate::vstate::shell::{VmShell, Wiring};
use crate::vstate::vcpu::{configure_vcpu, Vcpu};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::supported_cpuid;
use crate::vstate::vm_state::VmState;

/// COM1: a new UART, or one in saved state.
pub(crate) enum SerialPart {
    Fresh,
    Saved(SerialDeviceState),
}

/// A virtio device: a new one, or a transport and device in saved state.
pub(crate) enum DevicePart {
    Fresh(Box<dyn VirtioDevice>),
    Saved(VirtioSlotState),
}

/// The vCPUs: new ones entering the guest at its entry point (only vCPU 0;
/// the others wait for INIT/SIPI), or vCPUs in saved state.
pub(crate) enum VcpuPart {
    Boot {
        count: u8,
        mode: EntryMode,
        entry: u64,
    },
    Saved(Vec<VcpuState>),
}

/// Everything [`assemble`] builds a VM from.
pub(crate) struct MachineParts {
    /// The KVM VM, with guest RAM loaded or mapped from a snapshot.
    pub shell: VmShell,
    /// The snapshot the RAM is mapped from, if any.
    pub backing: Option<MemoryBacking>,
    /// Saved irqchip, PIT and clock.
    pub vm_state: Option<VmState>,
    pub serial: SerialPart,
    /// Where COM1 output goes.
    pub serial_sink: SerialSink,
    /// Virtio devices in bus order.
    pub devices: Vec<DevicePart>,
    /// Host resources saved devices reconnect to.
    pub backends: HostBackends,
    pub vcpus: VcpuPart,
    /// How the guest was booted (reported by [`KvmVm::boot_setup`]).
    pub boot: BootSetup,
    /// The kernel command line (reported by [`KvmVm::cmdline`]).
    pub cmdline: String,
    /// A test hook on the MMIO bus.
    pub mmio_hook: Option<MmioHook>,
    /// What the `nook-vmm` thread may reach: its file servers' directories.
    pub vmm_reach: Vec<nook_seccomp::FsReach>,
}

/// Durations of the steps of a boot or restore, for [`KvmVm::start_phases`].
#[derive(Debug)]
pub(crate) struct PhaseTimer {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseTimer {
    pub(crate) fn new() -> Self {
        Self {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends the step `name`, which began at the previous mark.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }
}

pub(crate) fn new_eventfd(what: &str) -> Result<EventFd, VmmError> {
    EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| VmmError::Device {
        what: format!("{what} eventfd"),
        source,
    })
}

pub(crate) fn clone_eventfd(evt: &EventFd, what: &str) -> Result<EventFd, VmmError> {
    evt.try_clone().map_err(|source| VmmError::Device {
        what: format!("{what} eventfd"),
        source,
    })
}

/// Builds and starts the VM `parts` describe (see the module docs for the
/// order); `timer` already holds the caller's own steps.
pub(crate) fn assemble(parts: MachineParts, mut timer: PhaseTimer) -> Result<KvmVm, VmmError> {
    let MachineParts {
        mut shell,
        backing,
        vm_state,
        serial,
        serial_sink,
        devices,
        mut backends,
        vcpus,
        boot,
        cmdline,
        mmio_hook,
        vmm_reach,
    } = parts;
    let vcpu_count = match &vcpus {
        VcpuPart::Boot { count, .. } => usize::from(*count),
        VcpuPart::Saved(states) => states.len(),
    };
    if shell.layout.queues.len() != devices.len() || shell.vcpus.len() != vcpu_count {
        return Err(VmmError::ShellMismatch);
    }
    let mem = shell.ram.clone();
    if let Some(state) = &vm_state {
        state
            .restore(&shell.fds.fd)
            .map_err(KvmSnapshotError::from)?;
        timer.mark("vm state");
    }

    let irq = clone_eventfd(&shell.wiring.com1, "serial")?;
    let out = open_serial_sink(serial_sink)?;
    let com1 = match serial {
        SerialPart::Fresh => SerialDevice::new(irq, out),
        SerialPart::Saved(state) => SerialDevice::restore(SerialArgs { irq, out }, &state)
            .map_err(KvmSnapshotError::from)?,
    };
    let com1 = Arc::new(Mutex::new(com1));
    let pio = port_io_bus(&com1)?;
    let mut virtio = wire_virtio(&shell.wiring, &mem, devices, &mut backends)?;
    // A new balloon's control came with the backends, a restored one's
    // was put there by its restore.
    let balloon = backends.balloon.take();
    if let Some(hook) = mmio_hook {
        virtio
            .mmio
            .insert(Arc::new(Mutex::new(HookDevice(hook.call))), hook.addr, 8)?;
    }
    timer.mark("devices");

    let vcpu_fds = load_vcpus(&mut shell, vcpus)?;
    timer.mark("vcpus");

    let exit = Arc::new(ExitState::new());
    let pause = Arc::new(PauseControl::default());
    let event_stop = new_eventfd("event loop stop")?;
    let event_loop = EventLoop::new(
        clone_eventfd(&event_stop, "event loop stop")?,
        clone_eventfd(&virtio.activated, "device activation")?,
        virtio.transports.clone(),
        virtio.queue_evts,
    )
    .map_err(|source| VmmError::Device {
        what: "event loop epoll".into(),
        source,
    })?;
    let mut vm = KvmVm {
        exit: exit.clone(),
        vcpu_runs: Vec::new(),
        event_run: None,
        event_stop,
        shell: None,
        mem,
        backing,
        boot,
        cmdline,
        phases: Vec::new(),
        snap: SnapshotHandles {
            pause: pause.clone(),
            serial: com1,
            transports: virtio.transports,
            vcpus: vcpu_count as u8,
        },
        recycle: None,
        balloon,
    };
    let buses = (Arc::new(pio), Arc::new(virtio.mmio));
    let confinement = if vmm_reach.is_empty() {
        ThreadConfinement::nothing()
    } else {
        ThreadConfinement::file_server(vmm_reach)
    };
    shell.confine_events(confinement.clone());
    start_jobs(
        &mut vm,
        &mut shell,
        (event_loop, confinement),
        vcpu_fds,
        buses,
        &pause,
    )?;
    vm.shell = Some(shell);
    if virtio.restored {
        // Backends of active devices, queued work, pending interrupts.
        let _ = virtio.activated.write(1);
        for k in &virtio.kicks {
            let _ = k.write(1);
        }
        for irq in &virtio.irqs {
            irq.retrigger_pending();
        }
    }
    timer.mark("threads");
    vm.phases = timer.phases;
    Ok(vm)
}

/// The virtio devices on the MMIO bus, wired to KVM.
struct Virtio {
    mmio: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// (transport index, queue index, notify eventfd), for the event loop.
    queue_evts: Vec<(usize, u16, EventFd)>,
    /// Written when a device starts (the event loop then watches its backend).
    activated: EventFd,
    /// Some device was restored.
    restored: bool,
    /// Queue notifiers of restored active devices, to re-run their queues.
    kicks: Vec<EventFd>,
    /// Interrupts of restored devices, to re-raise pending ones.
    irqs: Vec<Arc<IrqTrigger>>,
}

/// Puts every device in its slot: `VIRTIO_MMIO_BASE + 0x1000 * i`,
/// interrupt line `VIRTIO_IRQS[i]`, one ioeventfd per queue.
fn wire_virtio(
    wiring: &Wiring,
    mem: &GuestMemoryMmap,
    devices: Vec<DevicePart>,
    backends: &mut HostBackends,
) -> Result<Virtio, VmmError> {
    let mut v = Virtio {
        mmio: Bus::default(),
        transports: Vec::new(),
        queue_evts: Vec::new(),
        activated: new_eventfd("device activation")?,
        restored: false,
        kicks: Vec::new(),
        irqs: Vec::new(),
    };
    for (i, part) in devices.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        let name = format!("virtio slot {i}");
        let line = wiring.lines.get(i).ok_or(VmmError::ShellMismatch)?;
        let irq = Arc::new(IrqTrigger::new(clone_eventfd(line, &name)?));
        let dev_err = |source| KvmSnapshotError::Device { index: i, source };
        let (device, saved) = match part {
            DevicePart::Fresh(device) => (device, None),
            DevicePart::Saved(slot) => {
                let ctx = slot.transport.active.then(|| RestoreContext {
                    mem: mem.clone(),
                    interrupt: irq.clone(),
                });
                let device = restore_saved(&slot.device, backends, ctx).map_err(dev_err)?;
                (device, Some(slot.transport))
            }
        };
        let active = saved.as_ref().is_some_and(|s| s.active);
        let evts = wiring.notify.get(i).ok_or(VmmError::ShellMismatch)?;
        if evts.len() != device.queue_max_sizes().len() {
            return Err(VmmError::ShellMismatch);
        }
        let mut notify = Vec::new();
        for (q, evt) in evts.iter().enumerate() {
            notify.push(clone_eventfd(evt, &name)?);
            if active {
                v.kicks.push(clone_eventfd(evt, &name)?);
            }
            v.queue_evts.push((i, q as u16, clone_eventfd(evt, &name)?));
        }
        let activated = Some(clone_eventfd(&v.activated, "device activation")?);
        let transport = match saved {
            None => MmioTransport::new(device, mem.clone(), irq.clone(), notify, activated),
            Some(state) => {
                v.restored = true;
                v.irqs.push(irq.clone());
                let args = MmioTransportArgs {
                    device,
                    mem: mem.clone(),
                    interrupt: irq,
                    notify,
                    activated,
                };
                MmioTransport::restore(args, &state).map_err(dev_err)?
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        v.mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        v.transports.push(transport);
    }
    Ok(v)
}

/// Takes the shell's vCPUs and configures them for the boot entry, or
/// loads their saved state.
fn load_vcpus(shell: &mut VmShell, part: VcpuPart) -> Result<Vec<VcpuFd>, VmmError> {
    let mut fds = Vec::with_capacity(shell.vcpus.len());
    for slot in &mut shell.vcpus {
        fds.push(slot.take().ok_or(VmmError::ShellMismatch)?);
    }
    match part {
        VcpuPart::Boot { count, mode, entry } => {
            let cpuid = supported_cpuid(&shell.fds.kvm)?;
            for (index, fd) in fds.iter().enumerate() {
                configure_vcpu(fd, &cpuid, index as u8, count, (mode, entry))?;
            }
        }
        VcpuPart::Saved(states) => {
            for (index, (fd, s)) in fds.iter().zip(&states).enumerate() {
                let refused = s.restore(fd).map_err(KvmSnapshotError::from)?;
                if refused > 0 {
                    tracing::debug!("vmm: restore: vcpu{index}: {refused} msrs refused");
                }
            }
        }
    }
    Ok(fds)
}

/// Opens where COM1 output goes.
pub(crate) fn open_serial_sink(
    serial: SerialSink,
) -> Result<Box<dyn std::io::Write + Send>, VmmError> {
    Ok(match serial {
        SerialSink::Null => Box::new(std::io::sink()),
        SerialSink::Stdout => Box::new(std::io::stdout()),
        SerialSink::File(path) => {
            Box::new(
                std::fs::File::create(&path).map_err(|source| VmmError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        SerialSink::Writer(w) => w,
    })
}

/// The device of an [`MmioHook`]: guest writes call the hook.
struct HookDevice(Arc<dyn Fn() + Send + Sync>);

impl BusDevice for HookDevice {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _: u64, _: u64, _: &[u8]) -> Option<ExitReason> {
        (self.0)();
        None
    }
}

/// The port I/O bus every VM has: COM1, the i8042 (reset only) and the
/// ACPI sleep/reset ports.
fn port_io_bus(com1: &Arc<Mutex<SerialDevice>>) -> Result<Bus, VmmError> {
    let mut pio = Bus::default();
    pio.insert(com1.clone(), u64::from(COM1_PORT), 8)?;
    let i8042 = Arc::new(Mutex::new(I8042));
    pio.insert(i8042.clone(), u64::from(I8042_DATA_PORT), 1)?;
    pio.insert(i8042, u64::from(I8042_CMD_PORT), 1)?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPower)),
        u64::from(SLEEP_CONTROL_PORT),
        3,
    )?;
    Ok(pio)
}

/// Confines the calling thread (no new privileges, Landlock, capabilities)
/// and puts it under `filter`; logs what was applied.
pub(crate) fn confine(
    confinement: &ThreadConfinement,
    filter: ThreadFilter,
    thread: &str,
) -> Result<(), String> {
    let confined = nook_seccomp::confine_thread(confinement).map_err(|e| e.to_string())?;
    let applied = nook_seccomp::apply(filter).map_err(|e| e.to_string())?;
    tracing::debug!("vmm: {thread}: confinement {confined:?}, seccomp {applied:?}");
    Ok(())
}

/// Runs the device event loop on the shell's `nook-vmm` thread (confined
/// to `confinement`, then under the `vmm` filter) and each vCPU on its own
/// `nook-vcpu{N}` thread; each vCPU thread hands its vCPU (all of it) back
/// to [`KvmVm`] when the VM ends.
fn start_jobs(
    vm: &mut KvmVm,
    shell: &mut VmShell,
    (event_loop, confinement): (EventLoop, ThreadConfinement),
    vcpu_fds: Vec<VcpuFd>,
    (pio, mmio): (Arc<Bus>, Arc<Bus>),
    pause: &Arc<PauseControl>,
) -> Result<(), VmmError> {
    let spawn_err = |name: &str| {
        let name = name.to_string();
        move |source| VmmError::Spawn { name, source }
    };
    let loop_exit = vm.exit.clone();
    let run = shell.events.run(move || {
        if let Err(e) = confine(&confinement, ThreadFilter::Vmm, "nook-vmm") {
            tracing::error!("vmm: {e}");
            loop_exit.finish(Outcome::Failed {
                what: "confinement of the device event loop".into(),
                errno: libc::EPERM,
            });
            return;
        }
        if let Err(e) = event_loop.run() {
            loop_exit.finish(Outcome::Failed {
                what: "device event loop".into(),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
        }
    });
    vm.event_run = Some(run.map_err(spawn_err("nook-vmm"))?);
    for ((index, fd), worker) in vcpu_fds
        .into_iter()
        .enumerate()
        .zip(&mut shell.vcpu_workers)
    {
        let mut vcpu = Vcpu {
            index: index as u8,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: vm.exit.clone(),
            pause: pause.clone(),
            mem: vm.mem.clone(),
        };
        // The whole vCPU goes back, not only its fd: what it holds (the
        // buses and through them the devices, the memory) may be the last
        // reference, and a device dropped here would run its `Drop` (files
        // removed, threads joined) under the vCPU filter and Landlock
        // rules. The caller drops it in `teardown`.
        let run = worker.run(move || {
            vcpu.run();
            vcpu
        });
        vm.vcpu_runs
            .push(run.map_err(spawn_err(&format!("nook-vcpu{index}")))?);
        if let Some(t) = worker.pthread() {
            vm.exit.register_vcpu_thread(t);
        }
    }
    Ok(())
}
