//! Snapshot state of the legacy devices: COM1 ([`SerialDeviceState`]).
//! The i8042 and the ACPI power ports have no state.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::serial::{IrqFdTrigger, SerialDevice};
use crate::snapshot::persist::Persist;

/// Registers and receive FIFO of the 8250 UART.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Receive FIFO.
    pub in_buffer: Vec<u8>,
}

/// Why a serial state cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("saved serial state is invalid (receive fifo of {0} bytes)")]
pub struct SerialStateError(pub usize);

/// What COM1 needs besides its state.
pub struct SerialArgs {
    /// Its interrupt line (raised at once if the state has an interrupt
    /// pending).
    pub irq: EventFd,
    /// Where its output goes.
    pub out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for SerialArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialArgs")
            .field("irq", &self.irq)
            .finish()
    }
}

impl Persist for SerialDevice {
    type State = SerialDeviceState;
    type ConstructorArgs = SerialArgs;
    type Error = SerialStateError;

    fn save(&self) -> SerialDeviceState {
        let s = self.serial.state();
        SerialDeviceState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn restore(args: SerialArgs, state: &SerialDeviceState) -> Result<Self, SerialStateError> {
        let SerialArgs { irq, out } = args;
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(&s, IrqFdTrigger(irq), NoEvents, out)
            .map_err(|_| SerialStateError(state.in_buffer.len()))?;
        Ok(Self { serial, errors: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;

    #[test]
    fn serial_state_round_trips() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(evt.try_clone().unwrap(), Box::new(std::io::sink()));
        dev.write(0x3f8, 7, &[0x42]); // scratch
        dev.write(0x3f8, 3, &[0x83]); // DLAB
        dev.write(0x3f8, 0, &[0x0c]); // divisor low
        dev.write(0x3f8, 3, &[0x03]);
        let state = dev.save();
        assert_eq!(state.scratch, 0x42);
        assert_eq!(state.baud_divisor_low, 0x0c);
        let bytes = postcard::to_allocvec(&state).unwrap();
        let back: SerialDeviceState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);
        let args = SerialArgs {
            irq: evt,
            out: Box::new(std::io::sink()),
        };
        let restored = SerialDevice::restore(args, &back).unwrap();
        assert_eq!(restored.save(), state);
        let mut bad = state;
        bad.in_buffer = vec![0; 1000];
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let args = SerialArgs {
            irq: evt,
            out: Box::new(std::io::sink()),
        };
        assert!(SerialDevice::restore(args, &bad).is_err());
    }
}
