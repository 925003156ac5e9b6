//! Saving and restoring VM-wide KVM state ([`VmState`]): the in-kernel
//! irqchip (both PICs and the IOAPIC), the PIT and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring VM state.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op}")]
pub struct VmStateError {
    /// The operation.
    pub op: &'static str,
    /// The ioctl error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn k(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { op, source }
}

/// Irqchip, PIT and clock of a VM.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Master 8259.
    pub pic_master: kvm_irqchip,
    /// Slave 8259.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// PIT (i8254) with its speaker/flags word.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish()
    }
}

fn chip(id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id: id,
        ..Default::default()
    }
}

impl VmState {
    /// Reads the state of a VM whose vCPUs are paused.
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let mut pic_master = chip(KVM_IRQCHIP_PIC_MASTER);
        vm.get_irqchip(&mut pic_master)
            .map_err(k("get pic master state"))?;
        let mut pic_slave = chip(KVM_IRQCHIP_PIC_SLAVE);
        vm.get_irqchip(&mut pic_slave)
            .map_err(k("get pic slave state"))?;
        let mut ioapic = chip(KVM_IRQCHIP_IOAPIC);
        vm.get_irqchip(&mut ioapic).map_err(k("get ioapic state"))?;
        let pit = vm.get_pit2().map_err(k("get pit state"))?;
        let clock = vm.get_clock().map_err(k("get kvm clock"))?;
        Ok(Self {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
        })
    }

    /// Writes the state into a VM that has its irqchip and PIT but no
    /// running vCPU.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        vm.set_pit2(&self.pit).map_err(k("set pit state"))?;
        // Only the clock value is restored; KVM rejects flags such as
        // TSC_STABLE that describe the host it was read on.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(k("set kvm clock"))?;
        let chips = [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC),
        ];
        for (c, id) in chips {
            // The chip id is part of the state: never trust it from a file.
            let mut c = *c;
            c.chip_id = id;
            vm.set_irqchip(&c).map_err(k("set irqchip state"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_state_round_trips_through_bytes_and_kvm() {
        let mut s = VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
            ioapic: chip(KVM_IRQCHIP_IOAPIC),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 123_456_789,
                ..Default::default()
            },
        };
        s.pit.channels[0].count = 0x1234;
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: VmState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
        assert_eq!(back.clock.clock, 123_456_789);
        assert_eq!(back.pit.channels[0].count, 0x1234);

        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipping the kvm half: no /dev/kvm");
            return;
        };
        let a = kvm.create_vm().unwrap();
        a.create_irq_chip().unwrap();
        a.create_pit2(Default::default()).unwrap();
        let mut saved = VmState::save(&a).unwrap();
        // Mask a pin on the IOAPIC so the restore is observable.
        // SAFETY: chip_id is IOAPIC, so `ioapic` is the active union field.
        unsafe { saved.ioapic.chip.ioapic.redirtbl[3].bits = 0x1_0033 };
        let b = kvm.create_vm().unwrap();
        b.create_irq_chip().unwrap();
        b.create_pit2(Default::default()).unwrap();
        saved.restore(&b).unwrap();
        let again = VmState::save(&b).unwrap();
        // SAFETY: as above.
        let bits = unsafe { again.ioapic.chip.ioapic.redirtbl[3].bits };
        assert_eq!(bits, 0x1_0033);
        assert!(again.clock.clock >= saved.clock.clock);
    }
}
