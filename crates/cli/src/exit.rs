//! Documented exit codes of `nook`.

/// `--timeout` passed and the command was killed (as coreutils `timeout`).
pub const TIMEOUT: i32 = 124;
/// nook itself failed: bad arguments, no VM, lost guest.
pub const NOOK_FAILED: i32 = 125;
/// nook was interrupted by SIGINT.
pub const INTERRUPTED: i32 = 130;
/// nook was terminated by SIGTERM.
pub const TERMINATED: i32 = 143;
/// nook's terminal hung up (SIGHUP).
pub const HANGUP: i32 = 129;

/// Prints an error with its causes, the way every command reports failure.
pub fn report(err: &dyn std::error::Error) {
    let mut msg = format!("nook: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
}
