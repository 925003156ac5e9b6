//! Per-thread seccomp filters for nook's host-side threads that touch what
//! a guest controls: the kvm engine's vCPU threads (`vcpu`), its device
//! event loop (`vmm`), the virtio-fs server's queue workers (`fs`) and its
//! vhost-user protocol thread (`fs_proto`); and a process-wide deny-list
//! of dangerous calls for session hosts and the daemon (`service`).
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

//!
//! [`confine_thread`] adds the rest of a thread's confinement (no new
//! privileges, Landlock, capabilities; `NOOK_NO_CONFINE=1` turns it off),
//! and [`limit_process`] the resource limits of a whole helper process;
//! [`exec_ruleset`] prepares the Landlock domain of a program nook starts
//! (QEMU), entered between `fork` and `exec`.

mod confine;
mod exec;
mod filter;
mod limits;
mod names;
mod sigsys;
mod switch;

pub use caps::Capability;
pub use confine::{
    confine_enabled, confine_thread, landlock_abi, set_confine_enabled, ConfineError, Confined,
    FsReach, LandlockStatus, ThreadConfinement, FILE_SERVER_CAPS,
};
pub use exec::{exec_ruleset, ExecRuleset};
pub use filter::{apply, enabled, set_enabled, Applied, SeccompError, ThreadFilter, ALL_FILTERS};
pub use limits::{drop_all_privileges, limit_process, MAX_OPEN_FILES};
pub use sigsys::{syscall_name, SIGSYS_EXIT_CODE};
