//! nook's MCP server: microVM sandboxes as tools for AI agents.
//!
//! `nook mcp` speaks the Model Context Protocol over stdio (on the `rmcp`
//! SDK) and offers the tools of [`tools::register`]: one-shot `run`s in a
//! fresh VM ([`nook::Vm`]) and long-lived sandboxes, which are nook
//! sessions ([`nook_serve`]) owned by the connected client. The server is
//! a thin layer: exec, output, exit codes and files are nook's and
//! nook-serve's; this crate validates arguments, caps output and renders
//! results. Tool failures (an unknown sandbox, a bad argument) are tool
//! results with `isError`, never protocol errors.
#![forbid(unsafe_code)]

mod cancel;
mod capture;
mod config;
pub mod desktop;
mod error;
mod exec;
mod registry;
mod render;
mod sandbox;
mod server;
pub mod tools;
mod types;

pub use cancel::Cancel;
pub use capture::Capture;
pub use config::{McpConfig, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_OUTPUT};
pub use error::{McpError, ToolError};
pub use registry::{Render, ToolRegistry};
pub use sandbox::Sandboxes;
pub use server::{serve_stdio, NookMcp, INSTRUCTIONS, SERVER_NAME};
pub use types::*;
