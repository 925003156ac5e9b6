//! The C structs: options in, results out, output callbacks; and their
//! checked Rust forms.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use nook_lib::ExitStatus;

use super::args::{bytes_arg, opt_str_arg, str_list};
use crate::command::{capture, OutputStreams};
use crate::options::{ExecOptions, VmOptions};
use crate::status::CapiError;

/// What a VM boots from and with. All-zero (or `nook_vm_options_init`)
/// means nook's defaults; a NULL `nook_vm_options *` means the same.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nook_vm_options {
    /// An image reference (`alpine`, `127.0.0.1:5000/app:1`), pulled into
    /// the store (`$NOOK_HOME/images`) when it is not there. NULL: nook's
    /// built-in minimal root (busybox).
    pub image: *const c_char,
    /// `"auto"`, `"qemu"` or `"kvm"`. NULL: `"auto"`.
    pub engine: *const c_char,
    /// Guest memory in MiB. 0: 256.
    pub memory_mib: u32,
    /// vCPUs (at most 255). 0: 1.
    pub cpus: u32,
    /// How long to wait for the guest to boot, in seconds. 0: 60.
    pub boot_timeout_s: u32,
    /// Give the guest a network (user-mode NAT egress). Default: none.
    pub net: bool,
    /// Restore this named snapshot (`nook_session_snapshot`, `nook
    /// snapshot create`) instead of booting. `image` must then be NULL, and
    /// `memory_mib` and `cpus` 0 or the snapshot's. NULL: boot.
    pub snapshot: *const c_char,
}

/// How one command runs. All-zero (or `nook_exec_options_init`) means no
/// extra environment, the image's working directory and user, no timeout
/// and an empty stdin; a NULL `nook_exec_options *` means the same.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nook_exec_options {
    /// NULL-terminated array of `"KEY=VALUE"` strings, or NULL.
    pub env: *const *const c_char,
    /// Working directory in the guest, or NULL.
    pub cwd: *const c_char,
    /// Guest user (`name`, `uid`, `uid:gid`, `name:group`), or NULL.
    pub user: *const c_char,
    /// Kill the command (its whole process group) after this many
    /// milliseconds; the call then returns `NOOK_ERR_TIMEOUT`. 0: never.
    pub timeout_ms: u64,
    /// Bytes the command reads on its stdin (copied before the call
    /// returns), or NULL for an empty stdin.
    pub stdin_data: *const u8,
    /// How many bytes `stdin_data` has.
    pub stdin_len: usize,
}

/// How a command ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nook_exit {
    /// What a shell reports (and `nook run` exits with): the command's
    /// exit code; 128+N when signal N killed it; 124 when its timeout did.
    pub exit_code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Its timeout killed it.
    pub timed_out: bool,
}

impl From<ExitStatus> for nook_exit {
    fn from(s: ExitStatus) -> nook_exit {
        nook_exit {
            exit_code: s.shell_code(),
            signal: s.signal.unwrap_or(0),
            timed_out: s.timed_out,
        }
    }
}

/// A finished command's exit and captured output. The buffers belong to
/// nook: release them with `nook_free_output`. Each is followed by a NUL
/// byte that `*_len` does not count, so text output can be printed as a C
/// string (binary output may contain NULs of its own: use the length).
#[repr(C)]
#[derive(Debug)]
pub struct nook_output {
    pub exit: nook_exit,
    pub stdout_data: *mut u8,
    pub stdout_len: usize,
    pub stderr_data: *mut u8,
    pub stderr_len: usize,
}

impl nook_output {
    /// No output and a zero exit: what `nook_free_output` leaves.
    pub(crate) fn empty() -> nook_output {
        nook_output {
            exit: nook_exit::default(),
            stdout_data: std::ptr::null_mut(),
            stdout_len: 0,
            stderr_data: std::ptr::null_mut(),
            stderr_len: 0,
        }
    }

    fn new(status: ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> nook_output {
        let (stdout_data, stdout_len) = into_c_buffer(stdout);
        let (stderr_data, stderr_len) = into_c_buffer(stderr);
        nook_output {
            exit: status.into(),
            stdout_data,
            stdout_len,
            stderr_data,
            stderr_len,
        }
    }

    /// Releases the buffers and leaves the output empty.
    pub(crate) fn release(&mut self) {
        free_c_buffer(self.stdout_data, self.stdout_len);
        free_c_buffer(self.stderr_data, self.stderr_len);
        *self = nook_output::empty();
    }
}

/// `bytes` and a NUL after them, as a pointer C may hold; its length.
fn into_c_buffer(mut bytes: Vec<u8>) -> (*mut u8, usize) {
    let len = bytes.len();
    bytes.push(0);
    (Box::into_raw(bytes.into_boxed_slice()).cast::<u8>(), len)
}

/// Frees a buffer of [`into_c_buffer`] (nothing when `data` is null).
fn free_c_buffer(data: *mut u8, len: usize) {
    if data.is_null() {
        return;
    }
    let slice = std::ptr::slice_from_raw_parts_mut(data, len + 1);
    // SAFETY: `data` and `len` come from `into_c_buffer` (a boxed slice of
    // `len + 1` bytes) through a `nook_output` that only nook writes, and
    // `release` nulls them, so each buffer is freed once.
    drop(unsafe { Box::from_raw(slice) });
}

/// Receives a piece of a command's output. Return 0 to go on; anything
/// else closes that output (the command gets SIGPIPE/EPIPE on its next
/// write there, as in a shell pipeline) and no more of it is passed.
pub type nook_output_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, data: *const u8, len: usize) -> c_int>;

/// Where a streamed command's output goes. A NULL function discards that
/// output.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nook_callbacks {
    pub on_stdout: nook_output_fn,
    pub on_stderr: nook_output_fn,
    /// Passed to both functions as it is.
    pub user_data: *mut c_void,
}

/// One output as a writer that calls the C function.
struct CallbackWriter {
    f: nook_output_fn,
    user_data: *mut c_void,
}

// SAFETY: the writer is used by one thread at a time (nook's output
// thread), only while the streaming call that made it blocks; the header
// tells callers that the callbacks run on that thread, so `user_data` must
// be usable from it. The function pointer itself is plain code.
unsafe impl Send for CallbackWriter {}

impl std::io::Write for CallbackWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(f) = self.f else {
            return Ok(buf.len());
        };
        // SAFETY: `f` is the caller's callback with the documented
        // signature; `buf` is valid for `buf.len()` bytes during the call.
        let keep_going = unsafe { f(self.user_data, buf.as_ptr(), buf.len()) } == 0;
        if keep_going {
            Ok(buf.len())
        } else {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl nook_callbacks {
    fn streams(&self) -> OutputStreams {
        OutputStreams {
            stdout: Box::new(CallbackWriter {
                f: self.on_stdout,
                user_data: self.user_data,
            }),
            stderr: Box::new(CallbackWriter {
                f: self.on_stderr,
                user_data: self.user_data,
            }),
        }
    }
}

/// A command's end as the caller sees it: a timeout kill is
/// `NOOK_ERR_TIMEOUT`, with the results filled in.
fn check_timed_out(status: ExitStatus) -> Result<(), CapiError> {
    match status.timed_out {
        true => Err(CapiError::CommandTimedOut),
        false => Ok(()),
    }
}

/// Runs `command` with its output captured into `out`.
pub(crate) fn run_captured(
    out: &mut nook_output,
    command: impl FnOnce(OutputStreams) -> Result<ExitStatus, CapiError>,
) -> Result<(), CapiError> {
    let (streams, stdout, stderr) = capture();
    let status = command(streams)?;
    *out = nook_output::new(status, stdout.take(), stderr.take());
    check_timed_out(status)
}

/// Runs `command` with its output passed to `callbacks`; its exit in `exit`.
pub(crate) fn run_streamed(
    callbacks: &nook_callbacks,
    exit: &mut nook_exit,
    command: impl FnOnce(OutputStreams) -> Result<ExitStatus, CapiError>,
) -> Result<(), CapiError> {
    let status = command(callbacks.streams())?;
    *exit = status.into();
    check_timed_out(status)
}

impl nook_vm_options {
    /// nook's defaults: every field zero or NULL.
    pub(crate) fn defaults() -> nook_vm_options {
        nook_vm_options {
            image: std::ptr::null(),
            engine: std::ptr::null(),
            memory_mib: 0,
            cpus: 0,
            boot_timeout_s: 0,
            net: false,
            snapshot: std::ptr::null(),
        }
    }

    /// The checked options.
    ///
    /// # Safety
    /// The string fields are null or valid NUL-terminated strings.
    pub(crate) unsafe fn checked(&self) -> Result<VmOptions, CapiError> {
        // SAFETY: for the reads below, the caller's promise.
        let (image, engine, snapshot) = unsafe {
            (
                opt_str_arg(self.image, "vm.image")?,
                opt_str_arg(self.engine, "vm.engine")?,
                opt_str_arg(self.snapshot, "vm.snapshot")?,
            )
        };
        let engine = match engine {
            Some(e) => e.parse().map_err(|why| CapiError::Invalid {
                what: "vm.engine",
                why,
            })?,
            None => nook_lib::EngineKind::Auto,
        };
        let cpus = u8::try_from(self.cpus).map_err(|_| CapiError::Invalid {
            what: "vm.cpus",
            why: format!("{} is more than 255", self.cpus),
        })?;
        Ok(VmOptions {
            image,
            engine,
            memory_mib: (self.memory_mib != 0).then_some(self.memory_mib),
            vcpus: (cpus != 0).then_some(cpus),
            boot_timeout_s: (self.boot_timeout_s != 0).then_some(u64::from(self.boot_timeout_s)),
            net: self.net,
            snapshot,
        })
    }
}

impl nook_exec_options {
    /// No environment, working directory, user, timeout or stdin.
    pub(crate) fn defaults() -> nook_exec_options {
        nook_exec_options {
            env: std::ptr::null(),
            cwd: std::ptr::null(),
            user: std::ptr::null(),
            timeout_ms: 0,
            stdin_data: std::ptr::null(),
            stdin_len: 0,
        }
    }

    /// The checked options.
    ///
    /// # Safety
    /// The pointer fields are null or valid as their docs say.
    pub(crate) unsafe fn checked(&self) -> Result<ExecOptions, CapiError> {
        // SAFETY: for the reads below, the caller's promise.
        let (env, cwd, user, stdin) = unsafe {
            (
                str_list(self.env, "exec.env")?,
                opt_str_arg(self.cwd, "exec.cwd")?,
                opt_str_arg(self.user, "exec.user")?,
                bytes_arg(self.stdin_data, self.stdin_len, "exec.stdin_data")?,
            )
        };
        Ok(ExecOptions {
            env: ExecOptions::parse_env(env)?,
            cwd,
            user,
            timeout: (self.timeout_ms != 0).then(|| Duration::from_millis(self.timeout_ms)),
            stdin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_buffers_end_in_a_nul_and_are_freed_once() {
        let status = ExitStatus {
            code: Some(3),
            signal: None,
            timed_out: false,
        };
        let mut out = nook_output::new(status, b"hello".to_vec(), Vec::new());
        assert_eq!(out.exit.exit_code, 3);
        assert_eq!(out.stdout_len, 5);
        // SAFETY: `new` made a buffer of `stdout_len + 1` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(out.stdout_data, out.stdout_len + 1) };
        assert_eq!(bytes, b"hello\0");
        assert_eq!(out.stderr_len, 0);
        out.release();
        assert!(out.stdout_data.is_null() && out.stderr_data.is_null());
        out.release();
    }

    #[test]
    fn exits_say_what_a_shell_says() {
        let killed = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: false,
        };
        assert_eq!(
            nook_exit::from(killed),
            nook_exit {
                exit_code: 137,
                signal: 9,
                timed_out: false
            }
        );
        let timed_out = ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        assert_eq!(nook_exit::from(timed_out).exit_code, 124);
        assert!(matches!(
            check_timed_out(timed_out),
            Err(CapiError::CommandTimedOut)
        ));
    }

    #[test]
    fn zeroed_options_are_the_defaults() {
        // SAFETY: all pointer fields are null.
        let vm = unsafe { nook_vm_options::defaults().checked() }.unwrap();
        assert_eq!(vm.engine, nook_lib::EngineKind::Auto);
        assert!(vm.memory_mib.is_none() && vm.vcpus.is_none() && vm.image.is_none());
        // SAFETY: all pointer fields are null.
        let exec = unsafe { nook_exec_options::defaults().checked() }.unwrap();
        assert!(exec.env.is_empty() && exec.stdin.is_none() && exec.timeout.is_none());
        let mut bad = nook_vm_options::defaults();
        bad.engine = c"firecracker".as_ptr();
        bad.cpus = 300;
        // SAFETY: the engine points at a literal.
        let e = unsafe { bad.checked() }.unwrap_err();
        assert!(e.message().contains("firecracker"), "{e}");
    }
}
