//! The library-wide functions: version, errors, option defaults, output
//! release, and `nook_run`.

use std::ffi::{c_char, CStr};

use super::args::{opt_ref, ref_arg, str_list, write_out};
use super::guard::{guard, guard_value, last_error};
use super::types::{
    nook_callbacks, nook_exec_options, nook_exit, nook_output, nook_vm_options, run_captured,
    run_streamed,
};
use crate::command::run;
use crate::options::{ExecOptions, VmOptions};
use crate::status::{nook_status, CapiError};
use nook_lib::default_home;

/// The version of the C API this header describes; `nook_abi_version()`
/// says which one the linked library has. It changes when a function's
/// signature or a struct's layout does.
pub const NOOK_ABI_VERSION: u32 = 1;

/// nook's version, `"MAJOR.MINOR.PATCH"`.
///
/// Static: never NULL, never freed. Any thread.
#[no_mangle]
pub extern "C" fn nook_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The `NOOK_ABI_VERSION` this library was built with. Any thread.
#[no_mangle]
pub extern "C" fn nook_abi_version() -> u32 {
    NOOK_ABI_VERSION
}

/// The message of the calling thread's last failed call (its causes
/// included), or `""` when that call worked.
///
/// Never NULL. Owned by nook: valid until the calling thread's next nook
/// call; copy it to keep it. Each thread has its own.
#[no_mangle]
pub extern "C" fn nook_last_error() -> *const c_char {
    last_error()
}

/// The name of a status value (`"NOOK_ERR_VM"`), or `"NOOK_UNKNOWN"` for a
/// value that is none.
///
/// Static: never NULL, never freed. Any thread.
#[no_mangle]
pub extern "C" fn nook_status_name(status: i32) -> *const c_char {
    nook_status::from_value(status)
        .map(nook_status::name)
        .unwrap_or(c"NOOK_UNKNOWN")
        .as_ptr()
}

/// Sets `*opts` to nook's defaults (every field zero or NULL).
///
/// `NOOK_ERR_INVALID_ARGUMENT` when `opts` is NULL.
///
/// # Safety
/// `opts` is NULL or points at writable memory for a `nook_vm_options`.
#[no_mangle]
pub unsafe extern "C" fn nook_vm_options_init(opts: *mut nook_vm_options) -> nook_status {
    // SAFETY: the caller's promise on `opts`.
    guard(|| unsafe { write_out(opts, "opts", nook_vm_options::defaults()) })
}

/// Sets `*opts` to the defaults (every field zero or NULL).
///
/// `NOOK_ERR_INVALID_ARGUMENT` when `opts` is NULL.
///
/// # Safety
/// `opts` is NULL or points at writable memory for a `nook_exec_options`.
#[no_mangle]
pub unsafe extern "C" fn nook_exec_options_init(opts: *mut nook_exec_options) -> nook_status {
    // SAFETY: the caller's promise on `opts`.
    guard(|| unsafe { write_out(opts, "opts", nook_exec_options::defaults()) })
}

/// Releases the buffers of `*out` and zeroes it. Safe on a zeroed
/// `nook_output` and on one already freed; NULL does nothing.
///
/// # Safety
/// `out` is NULL, or points at a `nook_output` that is zeroed or was
/// filled by nook, and no other thread uses it meanwhile.
#[no_mangle]
pub unsafe extern "C" fn nook_free_output(out: *mut nook_output) {
    guard_value((), || {
        // SAFETY: the caller's promise: null or a valid, unshared output.
        if let Some(out) = unsafe { out.as_mut() } {
            out.release();
        }
    });
}

/// Checked `vm`, `argv` and `exec` arguments.
///
/// # Safety
/// Each pointer is NULL or valid as the public functions document.
pub(crate) unsafe fn command_args(
    vm: *const nook_vm_options,
    argv: *const *const c_char,
    exec: *const nook_exec_options,
) -> Result<(VmOptions, Vec<String>, ExecOptions), CapiError> {
    // SAFETY: for the reads below, the caller's promise.
    unsafe {
        let vm = opt_ref(vm).copied().unwrap_or(nook_vm_options::defaults());
        let exec = opt_ref(exec)
            .copied()
            .unwrap_or(nook_exec_options::defaults());
        Ok((vm.checked()?, str_list(argv, "argv")?, exec.checked()?))
    }
}

/// Runs a command in a fresh microVM, as `nook run` does: boots a VM with
/// `vm` (NULL: the defaults), runs `argv` in it with `exec` (NULL: the
/// defaults), waits for its end, stops the VM. Fills `*out` with its exit
/// and captured output.
///
/// `argv` is a NULL-terminated array (`{"uname", "-r", NULL}`); NULL or
/// empty runs the image's Entrypoint and Cmd. The command's own failure
/// is not an error: `NOOK_OK` with `out->exit.exit_code` non-zero. When
/// its timeout killed it: `NOOK_ERR_TIMEOUT`, with `*out` filled all the
/// same. On other errors `*out` is zeroed.
///
/// Blocks until the command ends. Any thread; calls on several threads
/// run several VMs at once. Call `nook_free_output(out)` afterwards
/// whatever this returned.
///
/// # Safety
/// `vm` and `exec` are NULL or point at initialised options whose strings
/// are NUL-terminated; `argv` is NULL or NULL-terminated; `out` points at
/// writable memory for a `nook_output`. All stay valid during the call.
#[no_mangle]
pub unsafe extern "C" fn nook_run(
    vm: *const nook_vm_options,
    argv: *const *const c_char,
    exec: *const nook_exec_options,
    out: *mut nook_output,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promise on `out`.
        unsafe { write_out(out, "out", nook_output::empty())? };
        // SAFETY: written just above, so valid; the caller does not use it
        // during the call.
        let out = unsafe { &mut *out };
        // SAFETY: the caller's promises on `vm`, `argv` and `exec`.
        let (vm, argv, exec) = unsafe { command_args(vm, argv, exec) }?;
        run_captured(out, |streams| {
            run(&default_home(), &vm, argv, &exec, streams)
        })
    })
}

/// `nook_run` with the output streamed: `callbacks` receive each piece of
/// stdout and stderr as it comes, and `*exit` how the command ended.
///
/// The callbacks run on a thread nook starts, one call at a time, never
/// after this function returned; `user_data` must be usable from that
/// thread. A callback that returns non-zero closes that output. Same
/// statuses as `nook_run`; `*exit` is filled on `NOOK_OK` and
/// `NOOK_ERR_TIMEOUT`.
///
/// # Safety
/// As `nook_run`; `callbacks` points at a `nook_callbacks` whose
/// functions are NULL or valid; `exit` points at a writable `nook_exit`.
#[no_mangle]
pub unsafe extern "C" fn nook_run_stream(
    vm: *const nook_vm_options,
    argv: *const *const c_char,
    exec: *const nook_exec_options,
    callbacks: *const nook_callbacks,
    exit: *mut nook_exit,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on `exit` and `callbacks`.
        let (exit, callbacks) = unsafe {
            write_out(exit, "exit", nook_exit::default())?;
            (&mut *exit, ref_arg(callbacks, "callbacks")?)
        };
        // SAFETY: the caller's promises on `vm`, `argv` and `exec`.
        let (vm, argv, exec) = unsafe { command_args(vm, argv, exec) }?;
        run_streamed(callbacks, exit, |streams| {
            run(&default_home(), &vm, argv, &exec, streams)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    fn last() -> String {
        // SAFETY: nook_last_error never returns NULL, and the string lives
        // until this thread's next nook call, after the copy.
        unsafe { CStr::from_ptr(nook_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    fn text(p: *const c_char) -> String {
        // SAFETY: the functions tested return static C strings.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
    }

    #[test]
    fn version_and_status_names() {
        assert_eq!(text(nook_version()), env!("CARGO_PKG_VERSION"));
        assert_eq!(nook_abi_version(), NOOK_ABI_VERSION);
        assert_eq!(text(nook_status_name(0)), "NOOK_OK");
        assert_eq!(text(nook_status_name(8)), "NOOK_ERR_VM");
        assert_eq!(text(nook_status_name(99)), "NOOK_UNKNOWN");
        assert_eq!(text(nook_status_name(-1)), "NOOK_UNKNOWN");
    }

    #[test]
    fn null_arguments_are_refused_with_their_names() {
        // SAFETY: for the calls below, every pointer is null or valid.
        unsafe {
            let argv = [c"true".as_ptr(), ptr::null()];
            let st = nook_run(ptr::null(), argv.as_ptr(), ptr::null(), ptr::null_mut());
            assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
            assert_eq!(last(), "out is a null pointer");
            let mut exit = nook_exit::default();
            let st = nook_run_stream(
                ptr::null(),
                argv.as_ptr(),
                ptr::null(),
                ptr::null(),
                &mut exit,
            );
            assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
            assert_eq!(last(), "callbacks is a null pointer");
            assert_eq!(
                nook_vm_options_init(ptr::null_mut()),
                nook_status::NOOK_ERR_INVALID_ARGUMENT
            );
            nook_free_output(ptr::null_mut());
        }
    }

    /// Runs `argv` with `vm`, expecting a failure before any VM boots.
    fn refused(
        vm: &nook_vm_options,
        argv: &[*const c_char],
        exec: &nook_exec_options,
    ) -> (nook_status, String) {
        let mut out = nook_output::empty();
        // SAFETY: the options, the NULL-terminated argv and `out` are valid.
        let st = unsafe { nook_run(vm, argv.as_ptr(), exec, &mut out) };
        assert!(out.stdout_data.is_null(), "no output on a refusal");
        // SAFETY: `out` is nook's.
        unsafe { nook_free_output(&mut out) };
        (st, last())
    }

    #[test]
    fn bad_options_fail_before_any_vm_boots() {
        let argv = [c"true".as_ptr(), ptr::null()];
        let exec = nook_exec_options::defaults();
        let mut vm = nook_vm_options::defaults();
        vm.engine = c"bogus".as_ptr();
        let (st, msg) = refused(&vm, &argv, &exec);
        assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("unknown engine `bogus`"), "{msg}");

        let vm = nook_vm_options::defaults();
        let (st, msg) = refused(&vm, &[ptr::null()], &exec);
        assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("nothing to run"), "{msg}");

        let bad_utf8 = b"\xff\0";
        let argv_bad = [bad_utf8.as_ptr().cast::<c_char>(), ptr::null()];
        let (st, msg) = refused(&vm, &argv_bad, &exec);
        assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
        assert_eq!(msg, "argv is not valid UTF-8");

        let env = [c"NOEQUALS".as_ptr(), ptr::null()];
        let exec_bad = nook_exec_options {
            env: env.as_ptr(),
            ..nook_exec_options::defaults()
        };
        let (st, msg) = refused(&vm, &argv, &exec_bad);
        assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("KEY=VALUE"), "{msg}");
    }

    #[test]
    fn a_bad_image_name_is_an_image_error_with_a_message() {
        let argv = [c"true".as_ptr(), ptr::null()];
        let vm = nook_vm_options {
            image: c"Not A Valid Image!".as_ptr(),
            ..nook_vm_options::defaults()
        };
        let (st, msg) = refused(&vm, &argv, &nook_exec_options::defaults());
        assert_eq!(st, nook_status::NOOK_ERR_IMAGE);
        assert!(
            msg.contains("cannot get image `Not A Valid Image!`"),
            "{msg}"
        );
        assert!(msg.contains("invalid image reference"), "{msg}");
    }
}
