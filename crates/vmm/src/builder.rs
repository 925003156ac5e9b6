//! Turns a [`KvmConfig`] into a running [`KvmVm`], in this order:
//!
//! 1. validate the configuration, install the vCPU kick handler;
//! 2. allocate guest memory;
//! 3. write ACPI tables, load kernel/initrd/command line (with the
//!    `virtio_mmio.device=` entries appended), boot page tables and GDT;
//! 4. create the KVM VM: memory slots, then irqchip and PIT (cheap order);
//! 5. wire devices: COM1, i8042, ACPI power ports on the port bus; virtio
//!    transports on the MMIO bus with an irqfd each and an ioeventfd per
//!    queue;
//! 6. create and configure vCPUs;
//! 7. start the `nook-vmm` event loop, then the `nook-vcpu{N}` threads.
//!
//! Any failure after threads exist goes through [`KvmVm`]'s drop, which stops
//! and joins them.

use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::acpi::write_acpi_tables;
use crate::arch::x86_64::boot::{load_guest, GuestImage};
use crate::arch::x86_64::layout::{
    COM1_IRQ, COM1_PORT, I8042_CMD_PORT, I8042_DATA_PORT, SLEEP_CONTROL_PORT, VIRTIO_IRQS,
    VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::arch::x86_64::regs::write_boot_tables;
use crate::config::{KvmConfig, SerialSink};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::power::AcpiPower;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::machine::KvmVm;
use crate::snapshot::SnapshotHandles;
use crate::vstate::exit::{ExitState, Outcome};
use crate::vstate::memory::create_guest_memory;
use crate::vstate::pause::PauseControl;
use crate::vstate::vcpu::{create_vcpu, install_kick_handler, Vcpu};
use crate::vstate::vm::create_vm;

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

pub(crate) fn irqfd(vm: &VmFd, gsi: u32, what: &str) -> Result<EventFd, VmmError> {
    let evt = new_eventfd(what)?;
    vm.register_irqfd(&evt, gsi).map_err(|e| VmmError::Device {
        what: format!("{what} irqfd (line {gsi})"),
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    Ok(evt)
}

/// Builds and starts the VM (see the module docs for the order).
pub(crate) fn build(cfg: KvmConfig) -> Result<KvmVm, VmmError> {
    let mut timer = PhaseTimer::new();
    cfg.validate()?;
    install_kick_handler()?;
    let mem = create_guest_memory(cfg.memory_bytes())?;
    timer.mark("guest memory");

    // The virtio devices, in their documented order.
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    let KvmConfig {
        kernel,
        initrd,
        cmdline: user_cmdline,
        vcpus,
        serial,
        console,
        disks,
        rng,
        ..
    } = cfg;
    let memory_bytes = u64::from(cfg.memory_mib) << 20;
    if let Some(stream) = console {
        let c = Console::new(Some(stream)).map_err(|source| VmmError::Device {
            what: "virtio-console stream".into(),
            source,
        })?;
        devices.push(("virtio-console".into(), Box::new(c)));
    }
    for (i, d) in disks.iter().enumerate() {
        let id = if d.id.is_empty() {
            format!("nook-disk{i}")
        } else {
            d.id.clone()
        };
        let b = Block::open(&d.path, d.read_only, &id)?;
        devices.push((format!("virtio-blk{i}"), Box::new(b)));
    }
    if rng {
        devices.push(("virtio-rng".into(), Box::new(Rng::new())));
    }

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

    let rsdp = write_acpi_tables(&mem, vcpus)?;
    let boot = load_guest(
        &mem,
        &GuestImage {
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &cmdline,
            memory_bytes,
            rsdp,
        },
    )?;
    write_boot_tables(&mem, boot.mode)?;
    timer.mark("load guest");

    let kvm_vm = create_vm(&mem)?;
    timer.mark("create kvm vm");
    let vm_fd = &kvm_vm.fd;

    // Port I/O devices.
    let out = open_serial_sink(serial)?;
    let com1 = SerialDevice::new(irqfd(vm_fd, COM1_IRQ, "serial")?, out);
    let com1 = Arc::new(Mutex::new(com1));
    let pio = port_io_bus(&com1)?;

    // Virtio devices.
    let mut mmio = Bus::default();
    let activated = new_eventfd("device activation")?;
    let mut transports = Vec::new();
    let mut queue_evts = Vec::new();
    for (i, (name, device)) in devices.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        let irq = Arc::new(IrqTrigger::new(irqfd(vm_fd, VIRTIO_IRQS[i], &name)?));
        let mut notify = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let evt = new_eventfd(&name)?;
            vm_fd
                .register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                .map_err(|e| VmmError::Device {
                    what: format!("{name} queue {q} ioeventfd"),
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
            notify.push(clone_eventfd(&evt, &name)?);
            queue_evts.push((i, q as u16, evt));
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            irq,
            notify,
            Some(clone_eventfd(&activated, "device activation")?),
        )));
        mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        transports.push(transport);
    }

    timer.mark("devices");
    let mut vcpu_fds = Vec::new();
    for index in 0..vcpus {
        vcpu_fds.push(create_vcpu(
            vm_fd,
            &kvm_vm.supported_cpuid,
            index,
            vcpus,
            (boot.mode, boot.entry),
        )?);
    }

    timer.mark("vcpus");
    let exit = Arc::new(ExitState::new());
    let pause = Arc::new(PauseControl::default());
    let event_stop = new_eventfd("event loop stop")?;
    let event_loop = EventLoop::new(
        clone_eventfd(&event_stop, "event loop stop")?,
        activated,
        transports.clone(),
        queue_evts,
    )
    .map_err(|source| VmmError::Device {
        what: "event loop epoll".into(),
        source,
    })?;

    let mut vm = KvmVm {
        exit: exit.clone(),
        vcpu_threads: Vec::new(),
        event_thread: None,
        event_stop,
        kvm_vm: None,
        mem,
        boot,
        cmdline,
        phases: Vec::new(),
        snap: SnapshotHandles {
            pause: pause.clone(),
            serial: com1,
            transports,
            vcpus,
        },
    };
    start_threads(&mut vm, event_loop, vcpu_fds, pio, mmio, &exit, &pause)?;
    vm.kvm_vm = Some(kvm_vm);
    timer.mark("threads");
    vm.phases = timer.phases;
    Ok(vm)
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

/// Durations of the build steps, for [`KvmVm::start_phases`].
struct PhaseTimer {
    last: std::time::Instant,
    phases: Vec<(&'static str, std::time::Duration)>,
}

impl PhaseTimer {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }
}

/// The port I/O bus every VM has: COM1, the i8042 (reset only) and the
/// ACPI sleep/reset ports. Boot and restore differ only in how COM1 is made.
pub(crate) fn port_io_bus(com1: &Arc<Mutex<SerialDevice>>) -> Result<Bus, VmmError> {
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

/// Starts the device event loop thread (`nook-vmm`) and one thread per vCPU
/// (`nook-vcpu{N}`): the last step of both a boot and a restore.
pub(crate) fn start_threads(
    vm: &mut KvmVm,
    event_loop: EventLoop,
    vcpu_fds: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    exit: &Arc<ExitState>,
    pause: &Arc<PauseControl>,
) -> Result<(), VmmError> {
    let loop_exit = exit.clone();
    vm.event_thread = Some(
        std::thread::Builder::new()
            .name("nook-vmm".into())
            .spawn(move || {
                if let Err(e) = event_loop.run() {
                    loop_exit.finish(Outcome::Failed {
                        what: "device event loop".into(),
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    });
                }
            })
            .map_err(|source| VmmError::Spawn {
                name: "nook-vmm".into(),
                source,
            })?,
    );
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    for (index, fd) in vcpu_fds.into_iter().enumerate() {
        let vcpu = Vcpu {
            index: index as u8,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            pause: pause.clone(),
        };
        let name = format!("nook-vcpu{index}");
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || vcpu.run())
            .map_err(|source| VmmError::Spawn { name, source })?;
        exit.register_vcpu_thread(handle.as_pthread_t());
        vm.vcpu_threads.push(handle);
    }
    Ok(())
}
