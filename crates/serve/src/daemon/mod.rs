//! The daemon, `nook serve`: one Unix socket, many clients, two protocols.
//! A connection whose first line carries an `op` field speaks the
//! `devshell-vm` sidecar protocol ([`sidecar_proto`]); any other speaks
//! nook's own ([`proto`]). The daemon is a multiplexer over the session
//! library: every session it creates is an ordinary nook session (its own
//! host process, listed by `nook ps`), driven through [`crate::SessionClient`].

mod conn;
mod desktop;
mod files;
mod lines;
mod pool;
pub mod proto;
mod server;
mod sidecar;
pub mod sidecar_proto;
mod sync;

pub use lines::{read_bounded_line, LineRead};
pub use server::{default_socket, serve, BetaImage, DaemonConfig, DaemonError};
