//! Snapshot state of the virtio-mmio transport: registers, negotiated
//! features, status, interrupt status and the queues as the driver
//! configured them (the live ring positions of an active device are in
//! the device's own state).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::MmioTransport;
use crate::devices::virtio::persist::{DeviceStateError, VirtqueueState};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::snapshot::persist::Persist;

/// Registers of one virtio-mmio transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// Virtio device type, to match the state with its device.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Device status.
    pub status: u32,
    /// The device was activated (and has not failed).
    pub active: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Queues as configured through the registers.
    pub queues: Vec<VirtqueueState>,
}

/// What a transport needs besides its state (as [`MmioTransport::new`]).
pub struct MmioTransportArgs {
    /// The device, already in its own restored state (active or not, as
    /// the transport state says).
    pub device: Box<dyn VirtioDevice>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<IrqTrigger>,
    /// Queue notification eventfds.
    pub notify: Vec<EventFd>,
    /// Written when the device starts.
    pub activated: Option<EventFd>,
}

impl std::fmt::Debug for MmioTransportArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransportArgs")
            .field("device_type", &self.device.device_type())
            .finish()
    }
}

impl MmioTransport {
    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }
}

impl Persist for MmioTransport {
    type State = MmioTransportState;
    type ConstructorArgs = MmioTransportArgs;
    type Error = DeviceStateError;

    fn save(&self) -> MmioTransportState {
        MmioTransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            status: self.status,
            active: self.active,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(VirtqueueState::save).collect(),
        }
    }

    /// A transport in `state` around `args.device`. The interrupt line is
    /// not raised here: call [`IrqTrigger::retrigger_pending`] once the VM
    /// can take it.
    fn restore(
        args: MmioTransportArgs,
        state: &MmioTransportState,
    ) -> Result<Self, DeviceStateError> {
        let MmioTransportArgs {
            device,
            mem,
            interrupt,
            notify,
            activated,
        } = args;
        if state.device_type != device.device_type()
            || state.queues.len() != device.queue_max_sizes().len()
        {
            return Err(DeviceStateError::WrongDevice);
        }
        let queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| q.restore(i as u16))
            .collect::<Result<Vec<_>, _>>()?;
        interrupt.restore_status(state.interrupt_status);
        let mut t = MmioTransport::new(device, mem, interrupt, notify, activated);
        t.queues = queues;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.acked_features = state.acked_features;
        t.queue_sel = state.queue_sel;
        t.status = state.status;
        t.active = state.active;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bring_up, transport};
    use super::*;

    #[test]
    fn mmio_transport_state_round_trips() {
        let (mut t, _, _) = transport(false);
        bring_up(&mut t);
        assert!(t.is_active());
        t.interrupt.trigger(1);
        let s = t.save();
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: MmioTransportState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let (fresh, _, _) = transport(false);
        let MmioTransport {
            device,
            mem,
            notify,
            ..
        } = fresh;
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let args = MmioTransportArgs {
            device,
            mem,
            interrupt: irq,
            notify,
            activated: None,
        };
        let r = MmioTransport::restore(args, &back).unwrap();
        assert_eq!(r.save(), s);
        assert!(r.is_active());
        assert_eq!(r.status(), s.status);

        let mut wrong = s.clone();
        wrong.device_type = 99;
        let (fresh, _, _) = transport(false);
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        assert!(matches!(
            MmioTransport::restore(
                MmioTransportArgs {
                    device: fresh.device,
                    mem: fresh.mem,
                    interrupt: irq,
                    notify: vec![],
                    activated: None,
                },
                &wrong
            ),
            Err(DeviceStateError::WrongDevice)
        ));
    }
}
