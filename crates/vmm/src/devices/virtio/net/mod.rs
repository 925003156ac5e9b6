//! virtio-net, backed by a Unix stream of length-prefixed Ethernet frames
//! (nook's network back end, the framing of QEMU's stream socket netdev).
mod device;
mod persist;
mod queue_handler;

pub use device::Net;
pub use persist::{NetArgs, NetState};
pub use queue_handler::{
    decode_frames, encode_frame, NetQueueHandler, HDR_LEN, MAX_FRAME, RX_FRAMES_CAPACITY,
    TX_BYTES_CAPACITY,
};
