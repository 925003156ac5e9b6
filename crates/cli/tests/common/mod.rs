//! What the CLI's end-to-end tests share: the `nook` command under test,
//! the skip check, and output helpers.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// The `nook` binary under test, with stdin closed and logging at default.
pub fn nook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nook"));
    c.env_remove("NOOK_LOG").stdin(Stdio::null());
    c
}

/// Whether real guests can run here; prints why not and returns false.
pub fn ready() -> bool {
    let agent_ok = std::env::var_os("NOOK_AGENT")
        .map(|p| std::path::Path::new(&p).is_file())
        .unwrap_or(false);
    if !agent_ok {
        eprintln!("skipping: NOOK_AGENT is not set to a built agent (run scripts/test, or scripts/setup and export NOOK_AGENT)");
        return false;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: qemu-system-x86_64 is not installed (run scripts/setup)");
        return false;
    }
    true
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
