//! Helpers of the end-to-end tests that boot real guests: the skip check
//! and a shell command's stdout.
#![allow(dead_code)]

use nook::Vm;

/// Whether `NOOK_AGENT` names a built agent (scripts/test sets it); prints
/// why not.
pub fn ready() -> bool {
    let ok = std::env::var_os("NOOK_AGENT")
        .map(|p| std::path::Path::new(&p).is_file())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping: NOOK_AGENT is not set to a built agent (run scripts/test)");
    }
    ok
}

/// The stdout of `sh -c SCRIPT` in `vm`; fails the test when it fails.
pub fn sh(vm: &Vm, script: &str) -> String {
    let out = vm.exec(["sh", "-c", script]).output().expect("exec");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
