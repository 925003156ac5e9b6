//! The `extern "C"` functions and the C types: the only unsafe code of
//! this crate. Every function runs its body through [`guard::guard`], so
//! no panic crosses into C and every failure leaves its message for
//! `nook_last_error()`.

mod api;
mod args;
mod guard;
mod session_api;
mod types;

pub use api::*;
pub use session_api::*;
pub use types::{
    nook_callbacks, nook_exec_options, nook_exit, nook_output, nook_output_fn, nook_vm_options,
};
