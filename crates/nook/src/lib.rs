//! nook: run commands inside hardware-isolated Linux microVMs.
//!
//! ```no_run
//! use nook::{Vm, VmConfig};
//! let vm = Vm::start(VmConfig::default())?;
//! let out = vm.exec(["uname", "-r"]).output()?;
//! print!("{}", String::from_utf8_lossy(&out.stdout));
//! vm.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`Vm`] boots on an engine (QEMU's `microvm`, or nook's own KVM VMM),
//! waits for the guest agent, and runs commands through [`ExecBuilder`].
#![forbid(unsafe_code)]

mod config;
mod conn;
mod engine;
mod error;
mod exec;
mod vm;

pub use config::{EngineKind, VmConfig};
pub use engine::select::{probe_kvm, select_engine, EngineChoice, KvmVerdict};
pub use error::{ExecError, VmError};
pub use exec::{Child, ChildHandle, ChildStdin, ExecBuilder, ExecEvent, ExitStatus, Output};
pub use nook_assets::{default_home, Assets};
pub use nook_proto::Winsize;
pub use vm::{prepare_assets, Vm, BASE_CMDLINE};
