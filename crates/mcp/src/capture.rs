//! Output of a command, capped per call: stdout and stderr share one
//! budget of `max_output` bytes; what comes after is read (so the command
//! never stalls on a full pipe) and dropped, and the result says so.

use crate::types::ExecOutput;

/// Collects a command's output up to a cap.
#[derive(Debug)]
pub struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl Capture {
    /// Keeps at most `cap` bytes of stdout and stderr together.
    pub fn new(cap: u64) -> Capture {
        Capture {
            stdout: Vec::new(),
            stderr: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            dropped: 0,
        }
    }

    fn room(&self) -> usize {
        self.cap
            .saturating_sub(self.stdout.len() + self.stderr.len())
    }

    pub fn stdout(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.room());
        self.stdout.extend_from_slice(&bytes[..keep]);
        self.dropped += (bytes.len() - keep) as u64;
    }

    pub fn stderr(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.room());
        self.stderr.extend_from_slice(&bytes[..keep]);
        self.dropped += (bytes.len() - keep) as u64;
    }

    /// The result of a command that ended with `status`. Output that is not
    /// UTF-8 is rendered with U+FFFD replacement characters.
    pub fn finish(self, status: nook::ExitStatus) -> ExecOutput {
        ExecOutput {
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            exit_code: status.shell_code(),
            truncated: self.dropped > 0,
            dropped_bytes: self.dropped,
            timed_out: status.timed_out,
            signal: if status.timed_out {
                None
            } else {
                status.signal
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> nook::ExitStatus {
        nook::ExitStatus {
            code: Some(code),
            signal: None,
            timed_out: false,
        }
    }

    #[test]
    fn output_under_the_cap_is_kept_whole() {
        let mut c = Capture::new(16);
        c.stdout(b"hi\n");
        c.stderr(b"oops\n");
        let out = c.finish(exited(3));
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.exit_code, 3);
        assert!(!out.truncated);
        assert_eq!(out.dropped_bytes, 0);
    }

    #[test]
    fn stdout_and_stderr_share_the_cap_and_the_rest_is_counted() {
        let mut c = Capture::new(10);
        c.stdout(b"12345678");
        c.stderr(b"abcd");
        c.stdout(b"zz");
        let out = c.finish(exited(0));
        assert_eq!(out.stdout, "12345678");
        assert_eq!(out.stderr, "ab");
        assert!(out.truncated);
        assert_eq!(out.dropped_bytes, 4);
        let exactly = {
            let mut c = Capture::new(4);
            c.stdout(b"1234");
            c.finish(exited(0))
        };
        assert!(!exactly.truncated, "output of exactly the cap is whole");
    }

    #[test]
    fn timeouts_and_signals_use_the_shell_codes() {
        let timed_out = Capture::new(1).finish(nook::ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        });
        assert_eq!(timed_out.exit_code, 124);
        assert!(timed_out.timed_out);
        assert_eq!(timed_out.signal, None);
        let killed = Capture::new(1).finish(nook::ExitStatus {
            code: None,
            signal: Some(15),
            timed_out: false,
        });
        assert_eq!(killed.exit_code, 143);
        assert_eq!(killed.signal, Some(15));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut c = Capture::new(100);
        c.stdout(b"a\xffb");
        assert_eq!(c.finish(exited(0)).stdout, "a\u{fffd}b");
    }
}
