//! Just enough of an i8042 keyboard controller for a guest to reset the
//! machine: writing 0xfe (pulse reset line) to the command port 0x64 ends
//! the VM with [`ExitReason::Reset`] (Linux `reboot=k`, its default
//! fallback). Reads return 0: no data, input buffer empty.

use crate::devices::bus::BusDevice;
use crate::vstate::exit::ExitReason;

use crate::arch::x86_64::layout::I8042_CMD_PORT;

const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 reset device (registered at ports 0x60 and 0x64).
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let is_cmd = base + offset == u64::from(I8042_CMD_PORT);
        (is_cmd && data.first() == Some(&CMD_RESET_CPU)).then_some(ExitReason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets() {
        let mut d = I8042;
        assert_eq!(d.write(0x64, 0, &[0xfe]), Some(ExitReason::Reset));
        assert_eq!(d.write(0x64, 0, &[0xd1]), None);
        assert_eq!(d.write(0x60, 0, &[0xfe]), None);
        let mut b = [0xaa];
        d.read(0x64, 0, &mut b);
        assert_eq!(b, [0]);
    }
}
