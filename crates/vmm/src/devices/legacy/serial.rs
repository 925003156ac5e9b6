//! 8250 UART on COM1 (vm-superio), output to the configured sink, interrupt
//! through an irqfd.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::vstate::exit::ExitReason;

/// Raises the serial interrupt line by writing its irqfd.
#[derive(Debug)]
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1.
pub struct SerialDevice {
    pub(super) serial: Serial<IrqFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    pub(super) errors: u64,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("errors", &self.errors)
            .finish()
    }
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(IrqFdTrigger(irq), out),
            errors: 0,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset)
            .map(|o| self.serial.read(o))
            .unwrap_or(0xff);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            if self.serial.write(o, v).is_err() {
                // Sink gone or irqfd full: keep the guest running.
                self.errors += 1;
                if self.errors == 1 {
                    tracing::warn!("vmm: serial output failed, dropping output");
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let out = Shared::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(evt.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        let mut lsr = [0u8];
        s.read(0x3f8, 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
