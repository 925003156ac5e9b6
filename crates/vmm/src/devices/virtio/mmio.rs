//! The virtio-mmio transport (virtio 1.x register layout, version 2).
//!
//! Register accesses arrive from vCPU threads as MMIO exits; queue
//! notifications arrive on the event loop thread through ioeventfds (or,
//! if a write slips past them, through [`QUEUE_NOTIFY`] here, which
//! forwards to the same eventfd). Any guest misbehaviour fails the device
//! (status `DEVICE_NEEDS_RESET`), never the VM.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, IrqTrigger, VirtioDevice, VirtioError, INT_CONFIG, VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use crate::vstate::exit::ExitReason;

mod persist;
pub use persist::{MmioTransportArgs, MmioTransportState};

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// QueueNotify register offset (the ioeventfd address within the window).
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Device status bits.
pub mod status {
    /// Guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// Guest has a driver.
    pub const DRIVER: u32 = 2;
    /// Driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation done.
    pub const FEATURES_OK: u32 = 8;
    /// Device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// Driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// "virt"
const MMIO_MAGIC: u32 = 0x7472_6976;
/// "NOOK"
const VENDOR: u32 = 0x4b4f_4f4e;

/// One virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    activated: Option<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    active: bool,
    failures: u64,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`. `notify[i]` is queue i's notification eventfd (also
    /// registered as ioeventfd); `activated` is written when the device
    /// starts so that the event loop picks up its backend.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        notify: Vec<EventFd>,
        activated: Option<EventFd>,
    ) -> Self {
        let queues = fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            queues,
            notify,
            activated,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            active: false,
            failures: 0,
        }
    }

    /// Device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (activated and not failed).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    /// Event loop: queue `index` was notified.
    pub fn process_queue(&mut self, index: u16) {
        if self.active {
            if let Err(e) = self.device.process_queue(index) {
                self.fail(e);
            }
        }
    }

    /// Event loop: the device backend fd is ready.
    pub fn process_backend(&mut self, events: EventSet) {
        if self.active {
            if let Err(e) = self.device.process_backend(events) {
                self.fail(e);
            }
        }
    }

    /// The backend fd to watch now, if any.
    pub fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        if self.active {
            self.device.backend_interest()
        } else {
            None
        }
    }

    /// Stops the device after a guest-caused error and tells the driver.
    fn fail(&mut self, e: VirtioError) {
        self.failures += 1;
        if self.failures <= 3 {
            tracing::warn!(
                "vmm: virtio device type {} failed: {e}",
                self.device.device_type()
            );
        }
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.trigger(INT_CONFIG);
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.queues = fresh_queues(self.device.as_ref());
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues may only be configured before the driver is done.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0
            && self.status & status::FEATURES_OK == 0
            && self.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            // Only modern (virtio 1.x) drivers are supported.
            v &= !status::FEATURES_OK;
        }
        let needs_reset = self.status & status::DEVICE_NEEDS_RESET;
        self.status = v | needs_reset;
        let ready = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if self.status & ready == ready && !self.active && needs_reset == 0 {
            if let Err(e) = self.activate() {
                self.fail(e);
            }
        }
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(VirtioError::InvalidQueue(i as u16));
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let q = if q.ready() {
                Queue::try_from(q.state()).map_err(|_| VirtioError::InvalidQueue(i as u16))?
            } else {
                // Unused queue: hand over a pristine (not ready) one.
                Queue::new(q.max_size()).map_err(|_| VirtioError::InvalidQueue(i as u16))?
            };
            queues.push(q);
        }
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        })?;
        self.active = true;
        if let Some(evt) = &self.activated {
            let _ = evt.write(1);
        }
        Ok(())
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| {
            // Sizes are powers of two chosen by the devices; fall back to a
            // minimal queue rather than panic if one is not.
            Queue::new(max).unwrap_or_else(|_| Queue::new(1).expect("queue of size 1 is valid"))
        })
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 {
            return;
        }
        let v: u32 = match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if offset >= CONFIG {
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - CONFIG, data);
            }
            return None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return None;
        };
        let v = u32::from_le_bytes(bytes);
        let can_negotiate = self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES if can_negotiate => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return None,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.device_features();
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    let size = u16::try_from(v).unwrap_or(0);
                    // Invalid sizes leave the queue invalid; activation fails.
                    q.set_size(size);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.set_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Dummy {
        activations: Arc<AtomicU32>,
        processed: Arc<AtomicU32>,
        fail_processing: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill((offset as u8).wrapping_add(1));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
            assert_eq!(ctx.queues.len(), 2);
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, _index: u16) -> Result<(), VirtioError> {
            self.processed.fetch_add(1, Ordering::SeqCst);
            if self.fail_processing {
                Err(VirtioError::QueueNotReady(0))
            } else {
                Ok(())
            }
        }
    }

    pub(super) fn transport(fail: bool) -> (MmioTransport, Arc<AtomicU32>, Arc<AtomicU32>) {
        let a = Arc::new(AtomicU32::new(0));
        let p = Arc::new(AtomicU32::new(0));
        let dev = Dummy {
            activations: a.clone(),
            processed: p.clone(),
            fail_processing: fail,
        };
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let notify = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        (
            MmioTransport::new(Box::new(dev), guest_memory(), irq, notify, None),
            a,
            p,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(0, off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(0, off, &v.to_le_bytes());
    }

    /// Drives the transport like Linux's virtio_mmio driver does.
    pub(super) fn bring_up(t: &mut MmioTransport) {
        w(t, STATUS, status::ACKNOWLEDGE);
        w(t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, DRIVER_FEATURES_SEL, 1);
        w(t, DRIVER_FEATURES, 1); // VERSION_1
        w(
            t,
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(t, QUEUE_SEL, q);
            w(t, QUEUE_NUM, 16);
            w(t, QUEUE_DESC_LOW, base);
            w(t, QUEUE_DRIVER_LOW, base + 0x100);
            w(t, QUEUE_DEVICE_LOW, base + 0x200);
            w(t, QUEUE_READY, 1);
        }
        w(
            t,
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    #[test]
    fn identifies_and_negotiates() {
        let (mut t, activations, _) = transport(false);
        assert_eq!(r(&mut t, MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(r(&mut t, VERSION), 2);
        assert_eq!(r(&mut t, DEVICE_ID), 42);
        w(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1);
        w(&mut t, DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1 << 5);
        let mut cfg = [0u8; 2];
        t.read(0, CONFIG + 3, &mut cfg);
        assert_eq!(cfg, [4, 4]);
        bring_up(&mut t);
        assert!(t.is_active());
        assert_eq!(activations.load(Ordering::SeqCst), 1);
        assert_eq!(t.acked_features, VIRTIO_F_VERSION_1);
        // Queue config is frozen once running.
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, QUEUE_NUM, 2);
        assert_eq!(t.queues[0].size(), 16);
        w(&mut t, STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(r(&mut t, STATUS), 0);
    }

    #[test]
    fn legacy_driver_without_version_1_is_refused() {
        let (mut t, activations, _) = transport(false);
        w(&mut t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(
            &mut t,
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, STATUS) & status::FEATURES_OK, 0);
        w(&mut t, STATUS, 0xf);
        assert_eq!(activations.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn nonsense_register_writes_never_panic() {
        let (mut t, _, _) = transport(false);
        let offsets = [
            0u64, 0x14, 0x20, 0x24, 0x30, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0x84, 0x90, 0xa4,
            0xfc, 0x100, 0xfff,
        ];
        let values = [
            0u32,
            1,
            2,
            0xf,
            0x7f,
            0xff,
            0x8000,
            0xffff,
            0x1_0000,
            u32::MAX,
        ];
        for &o in &offsets {
            for &v in &values {
                w(&mut t, o, v);
                t.write(0, o, &[v as u8]);
                t.write(0, o, &v.to_le_bytes()[..2]);
                let _ = r(&mut t, o);
            }
        }
        // Rings at the top of 32-bit space are outside guest memory: the
        // device must fail, not activate.
        let (mut t, activations, _) = transport(false);
        w(&mut t, STATUS, 3);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1);
        w(&mut t, STATUS, 0xb);
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, QUEUE_NUM, 16);
        w(&mut t, QUEUE_DESC_LOW, 0xffff_f000);
        w(&mut t, QUEUE_READY, 1);
        w(&mut t, STATUS, 0xf);
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        assert_ne!(r(&mut t, STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, INTERRUPT_STATUS) & INT_CONFIG, 0);
    }

    #[test]
    fn processing_error_fails_the_device_until_reset() {
        let (mut t, activations, processed) = transport(true);
        bring_up(&mut t);
        t.process_queue(0);
        assert!(!t.is_active());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        t.process_queue(0);
        assert_eq!(processed.load(Ordering::SeqCst), 1);
        w(&mut t, STATUS, 0);
        bring_up(&mut t);
        assert_eq!(activations.load(Ordering::SeqCst), 2);
        assert!(t.is_active());
    }
}
