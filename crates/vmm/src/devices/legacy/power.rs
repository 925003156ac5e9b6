//! ACPI hardware-reduced power ports (see [`crate::arch::x86_64::acpi`]).
//!
//! * [`SLEEP_CONTROL_PORT`] (0x600): a byte with `SLP_EN` (bit 5) and
//!   `SLP_TYP` (bits 2..4) = 5 — i.e. `0x34` — powers off: the VM ends with
//!   [`ExitReason::PowerOff`]. This is what Linux's ACPI `poweroff` writes.
//! * [`RESET_PORT`] (0x602): [`RESET_VALUE`] resets ([`ExitReason::Reset`]).
//! * [`SLEEP_STATUS_PORT`] (0x601) and reads of the others return 0.

use crate::arch::x86_64::layout::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT};
use crate::devices::bus::BusDevice;
use crate::vstate::exit::ExitReason;

/// Value that requests soft-off (S5).
pub const POWER_OFF_VALUE: u8 = (5 << 2) | (1 << 5);

/// The ACPI power device (ports 0x600..0x603).
#[derive(Debug, Default)]
pub struct AcpiPower;

impl BusDevice for AcpiPower {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let port = base + offset;
        let v = *data.first()?;
        if port == u64::from(SLEEP_CONTROL_PORT) && v & 0x20 != 0 && (v >> 2) & 7 == 5 {
            Some(ExitReason::PowerOff)
        } else if port == u64::from(RESET_PORT) && v == RESET_VALUE {
            Some(ExitReason::Reset)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let mut d = AcpiPower;
        let base = u64::from(SLEEP_CONTROL_PORT);
        assert_eq!(
            d.write(base, 0, &[POWER_OFF_VALUE]),
            Some(ExitReason::PowerOff)
        );
        assert_eq!(d.write(base, 0, &[(3 << 2) | 0x20]), None, "S3 is not off");
        assert_eq!(d.write(base, 0, &[5 << 2]), None, "no SLP_EN");
        assert_eq!(d.write(base, 2, &[RESET_VALUE]), Some(ExitReason::Reset));
        assert_eq!(d.write(base, 2, &[]), None);
    }
}
