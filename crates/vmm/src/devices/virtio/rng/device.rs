//! The virtio-rng device.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::queue_handler::RngQueueHandler;
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{device_type, ActivateContext, IrqTrigger, VirtioDevice, VirtioError};

const QUEUE_SIZES: [u16; 1] = [256];

/// virtio-rng (one request queue, no config space).
#[derive(Debug, Default)]
pub struct Rng {
    pub(super) active: Option<(GuestMemoryMmap, RngQueueHandler<Arc<IrqTrigger>>)>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .filter(virtio_queue::QueueT::ready)
            .ok_or(VirtioError::QueueNotReady(0))?;
        self.active = Some((
            ctx.mem,
            RngQueueHandler {
                queue,
                signal: ctx.interrupt,
            },
        ));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match (&mut self.active, index) {
            (Some((mem, handler)), 0) => handler.process_queue(mem),
            _ => Ok(()),
        }
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}
