//! Per-thread seccomp filters for nook's host-side threads that touch what
//! a guest controls: the kvm engine's vCPU threads (`vcpu`), its device
//! event loop (`vmm`) and the virtio-fs server's queue workers (`fs`).
//!
//! The allow-lists are data, in `filters/x86_64.json` (seccompiler's JSON
//! format), reviewed like code. A thread calls [`apply`] once, before it
//! handles anything from the guest; a filter stays with its thread (and
//! any thread it starts) for good. A call outside the list raises `SIGSYS`;
//! the handler installed here writes one line naming the thread's filter
//! and the call to stderr, then ends the whole process with exit code
//! [`SIGSYS_EXIT_CODE`] (see `docs/security.md`).
//!
//! Filters are on by default; `NOOK_NO_SECCOMP=1` in the environment (the
//! CLI's `--no-seccomp` sets it) or [`set_enabled`]`(false)` turns them off
//! for debugging.

mod filter;
mod names;
mod sigsys;

pub use filter::{apply, enabled, set_enabled, Applied, SeccompError, ThreadFilter};
pub use sigsys::{syscall_name, SIGSYS_EXIT_CODE};
