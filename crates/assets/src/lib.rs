//! Guest boot assets for nook: a kernel (Debian's cloud kernel fetched with
//! apt, or a local file) and an initramfs holding the nook agent as `/init`,
//! a static busybox and the kernel modules the guest needs, in load order.
//!
//! [`prepare`] is called on every VM start and is fast when nothing
//! changed; see `docs/assets.md` for the cache layout.
#![forbid(unsafe_code)]

mod config;
pub mod cpio;
mod debian;
mod elf;
mod error;
mod fsutil;
mod gc;
mod index;
mod initramfs;
mod kernel;
mod kernel_entry;
pub mod modules;
mod prepare;
mod progress;

pub use config::{
    default_home, Assets, AssetsConfig, KernelSource, PrepareWork, DEFAULT_BUSYBOX,
    DEFAULT_MODULES, DEFAULT_PACKAGE,
};
pub use elf::{
    dynamic_executable_problem, program_interpreter, read_modinfo, Modinfo, ModinfoError,
};
pub use error::AssetsError;
pub use initramfs::MODULES_MANIFEST;
pub use prepare::{prepare, refresh};
