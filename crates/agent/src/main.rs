//! nook-agent: PID 1 of a nook guest.
//!
//! Boot order: mount the pseudo filesystems, load the kernel modules listed
//! in `/etc/nook/modules`, open the `nook.agent` virtio-console port, greet
//! the host, then serve requests until told to shut down. Statically linked
//! so the initramfs needs no libc.

mod channel;
mod desktop;
mod entropy;
mod exec;
mod files;
mod init;
mod modules;
mod net;
mod pipes;
mod reaper;
mod serve;
mod shares;
mod storage;
mod tty;
mod user;

use std::process::ExitCode;

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    if pid1 {
        match init::setup() {
            Err(e) => {
                log(&format!("init failed: {e}"));
                init::power_off();
            }
            // Benchmarks compare nook against a bare boot of the same kernel
            // and initramfs: with this word the agent powers off after init.
            Ok(words) if words.poweroff_after_init => init::power_off(),
            Ok(_) => {}
        }
    }
    let port = match channel::open_port(channel::PORT_NAME) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("cannot open the agent channel: {e}"));
            if pid1 {
                init::power_off();
            }
            return ExitCode::FAILURE;
        }
    };
    let result = serve::serve(port, pid1);
    if let Err(e) = &result {
        log(&format!("agent stopped: {e}"));
    }
    if pid1 {
        init::power_off();
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes one line to the console (the kernel log device when PID 1).
pub(crate) fn log(msg: &str) {
    eprintln!("nook-agent: {msg}");
}
