//! nook sessions: VMs that outlive the command that started them.
//!
//! `start` spawns a detached *session host* (the `nook` binary re-executed
//! with [`HOST_SUBCOMMAND`]) that owns the session's [`nook::Vm`] and serves
//! a Unix socket under `$NOOK_HOME/sessions/NAME/` with the JSON-lines
//! protocol of [`wire`]. Any process can then drive the session through
//! [`SessionClient`]; `nook ps` reads the state files ([`list_sessions`]).
//! One host per session: a crash takes no other session down.
#![forbid(unsafe_code)]

mod client;
mod cp;
pub mod daemon;
mod debian_image;
pub mod desktop;
pub mod desktop_image;
mod error;
mod exec;
mod files;
mod harden;
mod host;
mod procs;
mod remote;
mod state;
pub mod toolchain;
pub mod wire;

pub use client::{
    remove, start, stop, CommandOutput, ExecInputSender, ProcOutput, RemoteExec, SessionClient,
};
pub use cp::{copy_in, copy_out, CopyPath, RemoteRead};
pub use debian_image::{ensure_debian_image, DebianRecipe};
pub use error::SessionError;
pub use harden::harden_daemon;
pub use host::run_host;
pub use state::{
    host_alive, list_sessions, now_unix, sessions_dir, validate_name, SessionDir, SessionPhase,
    SessionSpec, SessionState, SpecMount,
};

/// The hidden `nook` subcommand that runs a session host.
pub const HOST_SUBCOMMAND: &str = "__session-host";
