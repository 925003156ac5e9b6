//! The nook host <-> guest wire protocol.
//!
//! One byte stream per VM (a virtio-console port today) carries multiplexed
//! frames. Every frame is a 9-byte little-endian header followed by a payload:
//!
//! ```text
//!  0        4        8  9
//!  +--------+--------+--+---------------------------+
//!  |  len   | stream |k | payload (len bytes)        |
//!  +--------+--------+--+---------------------------+
//!   u32 LE   u32 LE   u8
//! ```
//!
//! `len` counts payload bytes only and never exceeds [`MAX_PAYLOAD`]. Stream 0
//! is the control stream (handshake, shutdown); every exec uses its own stream
//! id, chosen by the host. Control messages carry JSON payloads; stdio frames
//! carry raw bytes, so binary data passes untouched. Every data pipe is
//! flow-controlled by credit windows (see [`PIPE_WINDOW`] and [`Credit`]).
//!
//! Before the channel exists, the host tells the agent what to mount
//! through words on the kernel command line: [`BootWords`].
//!
//! The crate is pure: no I/O beyond `Read`/`Write`, no threads of its own
//! (only the [`CreditGate`] that producer threads wait on), no unsafe.
//! `docs/protocol.md` describes every message.
#![forbid(unsafe_code)]

mod boot;
pub mod desktop;
mod file;
mod flow;
mod frame;
pub mod link;
mod msg;
mod net;

pub use boot::{
    percent_decode, percent_encode, BootWordError, BootWords, DiskMount, ShareMount, WORD_PREFIX,
};
pub use desktop::{
    fit_within, scale_edge, scale_point, Coordinate, DesktopAction, DesktopReply, DesktopRequest,
    DesktopResult, ScrollDirection,
};
pub use file::{FileKind, FileReply, FileRequest, FileStat, MAX_LIST, MAX_READ};
pub use flow::{
    Credit, CreditGate, Pipe, PipeClosed, RecvWindow, SendCredit, WindowOverrun, CREDIT_BATCH,
    PIPE_WINDOW,
};
pub use frame::{read_frame, write_frame, Decoder, Frame, FrameError, HEADER_LEN, MAX_PAYLOAD};
pub use msg::{
    ErrorCode, ErrorReply, ExecRequest, Exited, GuestHello, GuestMsg, HostHello, HostMsg, Kind,
    MsgError, Resync, Started, Winsize, FEATURE_DESKTOP,
};
pub use net::{format_mac, parse_mac, NetBoot, NetBootError};

/// Version of the wire protocol. Host and agent refuse to talk across versions.
/// 2: credit-based flow control on every pipe (`Credit`, `PipeClosed`).
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest stdio chunk a sender puts in one frame.
pub const STDIO_CHUNK: usize = 32 * 1024;

/// Stream id of the control stream.
pub const CONTROL_STREAM: u32 = 0;
