//! nook's dev shell (`nook shell`): a shell over a project workspace whose
//! builtins act on the workspace and whose every other program runs in an
//! isolated session VM that sees the same workspace.
//!
//! - [`parse`] and [`interp`]: the line grammar, scripts and builtins.
//! - [`backend`]: where programs run (a nook session VM; see the modules).
//! - [`repl`]: the interactive loop; [`front::run`] ties it all together.
#![forbid(unsafe_code)]

pub mod ast;
pub mod backend;
mod builtins;
pub mod config;
mod error;
mod expand;
pub mod front;
mod guestfs;
mod hostfs;
pub mod interp;
mod io;
mod lex;
pub mod parse;
mod repl;
pub mod resume;
pub mod signals;
pub mod term;
pub mod workspace;

pub use error::{ParseError, ShellError};
pub use front::{run, ShellInvocation, ShellScript};
pub use hostfs::HostFs;
pub use interp::Shell;
