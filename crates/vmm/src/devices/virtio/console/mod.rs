//! virtio-console with a single port (no multiport), backed by a Unix
//! stream: the agent channel.
mod device;
mod persist;
mod queue_handler;

pub use device::Console;
pub use persist::{ConsoleArgs, ConsoleState};
pub use queue_handler::{ConsoleQueueHandler, INPUT_CAPACITY, OUTPUT_CAPACITY};
