//! nook's E2B-compatible API: the E2B control plane and the in-sandbox
//! `envd` API served over HTTP/1.1 on loopback, each sandbox a nook
//! session, so that an unmodified E2B SDK program runs its sandboxes as
//! nook microVMs (`nook serve --e2b`; see docs/e2b.md).
//!
//! This is a layer over [`nook_serve`]: commands, files and lifecycle go
//! through its sessions; nothing here talks to a VM directly.
#![forbid(unsafe_code)]

mod api;
mod config;
mod connect;
mod envd;
mod error;
mod filesystem;
mod http;
mod multipart;
mod process;
mod sandboxes;
mod server;
mod watch;

pub use config::{
    api_key, E2bConfig, API_KEY_ENV, BASE_PACKAGES, BASE_SUITE, BASE_TEMPLATE, DEFAULT_BASE_IMAGE,
    DEFAULT_LISTEN, DEFAULT_TIMEOUT_S,
};
pub use envd::ENVD_VERSION;
pub use error::E2bError;
pub use server::{serve, warm_template, Server};
