//! The exit codes nook's front ends report, defined once. They follow the
//! shell's conventions (and coreutils' `timeout` for 124), so a script
//! cannot tell a command run by nook from one run by `sh`, except for
//! [`NOOK_FAILED`].

/// The command line is malformed or asks for something nook cannot do
/// (an unknown option, a value out of range, an option `--snapshot` cannot
/// honour); nothing was started. (clap's own code for usage errors.)
pub const USAGE: i32 = 2;
/// `--timeout` passed and the command's process group was killed.
pub const TIMEOUT: i32 = 124;
/// nook itself or the VM failed: bad arguments, a failed boot, a lost guest.
pub const NOOK_FAILED: i32 = 125;
/// The command exists but cannot be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// A process killed by signal N reports `SIGNAL_BASE + N`.
pub const SIGNAL_BASE: i32 = 128;
/// Killed by SIGHUP (nook's terminal hung up).
pub const HANGUP: i32 = killed_by(1);
/// Killed by SIGINT (Ctrl-C).
pub const INTERRUPTED: i32 = killed_by(2);
/// Killed by SIGPIPE (its stdout was closed).
pub const BROKEN_PIPE: i32 = killed_by(13);
/// Killed by SIGTERM.
pub const TERMINATED: i32 = killed_by(15);

/// The code of a process killed by `signal`.
pub const fn killed_by(signal: i32) -> i32 {
    SIGNAL_BASE + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_codes_match_the_shell() {
        assert_eq!(HANGUP, 129);
        assert_eq!(INTERRUPTED, 130);
        assert_eq!(BROKEN_PIPE, 141);
        assert_eq!(TERMINATED, 143);
        assert_eq!(killed_by(9), 137);
    }
}
