//! libnook: nook's C API. Run commands in microVMs, drive sessions (exec,
//! copy files, snapshot, stop), from C or any language with a C FFI.
//!
//! The header is `include/nook.h`, generated from this crate by cbindgen
//! (`tests/header.rs` checks it is current; see `docs/c-api.md`). The
//! `extern "C"` functions live in [`ffi`], the only module with unsafe
//! code; they check their arguments and call the safe modules below,
//! which call `nook` and `nook_serve` as the CLI and the daemon do.

mod command;
mod ffi;
mod options;
mod session;
mod status;

pub use ffi::*;
pub use session::nook_session;
pub use status::nook_status;
