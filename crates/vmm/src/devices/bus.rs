//! Address-decoding bus for port I/O and MMIO exits.

use std::sync::{Arc, Mutex};

use crate::vstate::exit::ExitReason;

use super::lock;

/// A device reachable through port I/O or MMIO exits.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` into the device's range
    /// registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write; returns `Some` when the write ends the VM.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<ExitReason>;
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Range base.
        base: u64,
        /// Range length.
        len: u64,
    },
}

/// What a write on the bus did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusWrite {
    /// A device took it.
    Done,
    /// A device took it and the VM must end.
    Exit(ExitReason),
    /// No device is there.
    Unclaimed,
}

struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each owned by a device.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl Bus {
    /// Adds `device` at `base..base + len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, BusRange { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<&BusRange> {
        let i = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[i];
        let end = addr.checked_add(len as u64)?;
        (end <= r.base + r.len).then_some(r)
    }

    /// Dispatches a read; returns false (leaving `data` alone) if no device
    /// claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some(r) => {
                lock(&r.device).read(r.base, addr - r.base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write.
    pub fn write(&self, addr: u64, data: &[u8]) -> BusWrite {
        match self.find(addr, data.len()) {
            Some(r) => match lock(&r.device).write(r.base, addr - r.base, data) {
                Some(reason) => BusWrite::Exit(reason),
                None => BusWrite::Done,
            },
            None => BusWrite::Unclaimed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill((base + offset) as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<ExitReason> {
            self.0.push((base, offset, data.to_vec()));
            (data == [0xff]).then_some(ExitReason::Reset)
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::default();
        bus.insert(dev.clone(), 0x60, 1).unwrap();
        bus.insert(dev.clone(), 0x64, 1).unwrap();
        assert!(bus.insert(dev.clone(), 0x63, 2).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b[0], 0x64);
        assert!(!bus.read(0x62, &mut b));
        let mut wide = [0u8; 2];
        assert!(!bus.read(0x64, &mut wide), "access crossing the range end");
        assert_eq!(bus.write(0x64, &[0xff]), BusWrite::Exit(ExitReason::Reset));
        assert_eq!(bus.write(0x60, &[1]), BusWrite::Done);
        assert_eq!(bus.write(0x61, &[1]), BusWrite::Unclaimed);
        assert_eq!(lock(&dev).0.len(), 2);
    }
}
