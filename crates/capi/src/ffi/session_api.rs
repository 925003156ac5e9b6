//! The session functions: start, open, exec, copy, snapshot, stop,
//! remove, free.

use std::ffi::c_char;
use std::path::Path;

use nook_lib::default_home;

use super::api::command_args;
use super::args::{opt_str_arg, ref_arg, str_arg, write_out};
use super::guard::{guard, guard_value};
use super::types::{
    nook_callbacks, nook_exec_options, nook_exit, nook_output, nook_vm_options, run_captured,
    run_streamed,
};
use crate::session::{nook_session, remove, remove_snapshot};
use crate::status::nook_status;

/// Starts a session, as `nook start` does: a VM (`vm`; NULL: the defaults)
/// that lives on after this call, hosted by a `nook` process of its own
/// (the binary `NOOK_BIN` names, else `nook` on PATH). `name` NULL picks a
/// fresh one (`nook_session_name`). A `vm->snapshot` starts it from that
/// snapshot. On `NOOK_OK`, `*session` is a new handle; else it is NULL.
///
/// Blocks until the VM serves (seconds on the qemu engine). Any thread.
/// The session outlives the handle and the process: stop it with
/// `nook_session_stop`, remove it with `nook_session_remove`.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `vm` NULL or initialised
/// options; `session` points at a writable `nook_session *`.
#[no_mangle]
pub unsafe extern "C" fn nook_session_start(
    name: *const c_char,
    vm: *const nook_vm_options,
    session: *mut *mut nook_session,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on `session`, `name` and `vm`.
        let (name, vm) = unsafe {
            write_out(session, "session", std::ptr::null_mut())?;
            let name = opt_str_arg(name, "name")?;
            (
                name,
                command_args(vm, std::ptr::null(), std::ptr::null())?.0,
            )
        };
        let handle = nook_session::start(&default_home(), name, &vm)?;
        // SAFETY: checked writable above.
        unsafe { *session = Box::into_raw(Box::new(handle)) };
        Ok(())
    })
}

/// A handle on the running session `name` (started by `nook start`, the
/// daemon, or `nook_session_start` in any process). `NOOK_ERR_NOT_FOUND`
/// when there is none, `NOOK_ERR_NOT_RUNNING` when it ended. On
/// `NOOK_OK`, `*session` is a new handle; else it is NULL.
///
/// # Safety
/// `name` is a NUL-terminated string; `session` points at a writable
/// `nook_session *`.
#[no_mangle]
pub unsafe extern "C" fn nook_session_open(
    name: *const c_char,
    session: *mut *mut nook_session,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on `session` and `name`.
        let name = unsafe {
            write_out(session, "session", std::ptr::null_mut())?;
            str_arg(name, "name")?
        };
        let handle = nook_session::open(&default_home(), name)?;
        // SAFETY: checked writable above.
        unsafe { *session = Box::into_raw(Box::new(handle)) };
        Ok(())
    })
}

/// The session's name; NULL when `session` is NULL. Owned by the handle:
/// valid until `nook_session_free(session)`.
///
/// # Safety
/// `session` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn nook_session_name(session: *const nook_session) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: the caller's promise: null or a live handle.
        unsafe { session.as_ref() }.map_or(std::ptr::null(), |s| s.c_name.as_ptr())
    })
}

/// Runs `argv` (NULL-terminated, not empty) in the session with `exec`
/// (NULL: the defaults) and fills `*out`, as `nook_run` does (same
/// statuses; `NOOK_ERR_NOT_RUNNING` when the session was stopped).
///
/// Blocks until the command ends. A handle may run commands from several
/// threads at once. Call `nook_free_output(out)` afterwards.
///
/// # Safety
/// `session` is a live handle; the rest as `nook_run`.
#[no_mangle]
pub unsafe extern "C" fn nook_session_exec(
    session: *const nook_session,
    argv: *const *const c_char,
    exec: *const nook_exec_options,
    out: *mut nook_output,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on every argument; `out` is used
        // only after it was checked and written.
        let (out, session, (_, argv, exec)) = unsafe {
            write_out(out, "out", nook_output::empty())?;
            (
                &mut *out,
                ref_arg(session, "session")?,
                command_args(std::ptr::null(), argv, exec)?,
            )
        };
        run_captured(out, |streams| session.exec(argv, &exec, streams))
    })
}

/// `nook_session_exec` with the output streamed to `callbacks` and the
/// exit in `*exit`, as `nook_run_stream` does (same callback rules).
///
/// # Safety
/// `session` is a live handle; the rest as `nook_run_stream`.
#[no_mangle]
pub unsafe extern "C" fn nook_session_exec_stream(
    session: *const nook_session,
    argv: *const *const c_char,
    exec: *const nook_exec_options,
    callbacks: *const nook_callbacks,
    exit: *mut nook_exit,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on every argument; `exit` is used
        // only after it was checked and written.
        let (exit, session, callbacks, (_, argv, exec)) = unsafe {
            write_out(exit, "exit", nook_exit::default())?;
            (
                &mut *exit,
                ref_arg(session, "session")?,
                ref_arg(callbacks, "callbacks")?,
                command_args(std::ptr::null(), argv, exec)?,
            )
        };
        run_streamed(callbacks, exit, |streams| {
            session.exec(argv, &exec, streams)
        })
    })
}

/// Copies host file or directory tree `host_path` into the session at
/// `guest_path` (into it, when it is a directory), keeping modes and
/// symlinks, as `nook cp` does. `*bytes` (when `bytes` is not NULL) is
/// set to the bytes copied.
///
/// # Safety
/// `session` is a live handle; the paths NUL-terminated strings; `bytes`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn nook_session_copy_in(
    session: *const nook_session,
    host_path: *const c_char,
    guest_path: *const c_char,
    bytes: *mut u64,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on the arguments.
        let (session, host, guest) = unsafe {
            (
                ref_arg(session, "session")?,
                str_arg(host_path, "host_path")?,
                str_arg(guest_path, "guest_path")?,
            )
        };
        let n = session.copy_in(Path::new(host), guest)?;
        // SAFETY: `bytes` is null or writable (the caller's promise).
        if let Some(b) = unsafe { bytes.as_mut() } {
            *b = n;
        }
        Ok(())
    })
}

/// Copies guest file or directory tree `guest_path` out of the session to
/// `host_path` (into it, when it is a directory), as `nook cp` does.
/// `*bytes` (when `bytes` is not NULL) is set to the bytes copied.
///
/// # Safety
/// As `nook_session_copy_in`.
#[no_mangle]
pub unsafe extern "C" fn nook_session_copy_out(
    session: *const nook_session,
    guest_path: *const c_char,
    host_path: *const c_char,
    bytes: *mut u64,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on the arguments.
        let (session, guest, host) = unsafe {
            (
                ref_arg(session, "session")?,
                str_arg(guest_path, "guest_path")?,
                str_arg(host_path, "host_path")?,
            )
        };
        let n = session.copy_out(guest, Path::new(host))?;
        // SAFETY: `bytes` is null or writable (the caller's promise).
        if let Some(b) = unsafe { bytes.as_mut() } {
            *b = n;
        }
        Ok(())
    })
}

/// Snapshots the session's VM as the named snapshot `snapshot_name`
/// (`$NOOK_HOME/snapshots/NAME`, listed by `nook snapshot ls`); the
/// session runs on. No command may be running in it. Start sessions or
/// runs from it with `nook_vm_options.snapshot`.
///
/// # Safety
/// `session` is a live handle; `snapshot_name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nook_session_snapshot(
    session: *const nook_session,
    snapshot_name: *const c_char,
) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promises on the arguments.
        let (session, name) = unsafe {
            (
                ref_arg(session, "session")?,
                str_arg(snapshot_name, "snapshot_name")?,
            )
        };
        session.snapshot(name)
    })
}

/// Stops the session cleanly, as `nook stop` does, and waits until it is
/// gone; stopping a stopped session is `NOOK_OK`. The handle stays valid
/// (later calls return `NOOK_ERR_NOT_RUNNING`) until freed.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn nook_session_stop(session: *const nook_session) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promise on `session`.
        unsafe { ref_arg(session, "session")? }.stop()
    })
}

/// Removes session `name` and its files, as `nook rm` does; a running
/// one only with `force` (which stops it first), else `NOOK_ERR_BUSY`.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nook_session_remove(name: *const c_char, force: bool) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promise on `name`.
        let name = unsafe { str_arg(name, "name")? };
        remove(&default_home(), name, force)
    })
}

/// Removes the named snapshot `snapshot_name` (`nook_session_snapshot`),
/// as `nook snapshot rm` does; `NOOK_ERR_NOT_FOUND` when there is none.
///
/// # Safety
/// `snapshot_name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nook_snapshot_remove(snapshot_name: *const c_char) -> nook_status {
    guard(|| {
        // SAFETY: the caller's promise on `snapshot_name`.
        let name = unsafe { str_arg(snapshot_name, "snapshot_name")? };
        remove_snapshot(&default_home(), name)
    })
}

/// Releases the handle (the session itself runs on). NULL does nothing.
/// No other call may use the handle during or after this one.
///
/// # Safety
/// `session` is NULL or a handle from `nook_session_start` or
/// `nook_session_open` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn nook_session_free(session: *mut nook_session) {
    guard_value((), || {
        if !session.is_null() {
            // SAFETY: a handle made by `Box::into_raw` in start/open and
            // not freed before (the caller's promise).
            drop(unsafe { Box::from_raw(session) });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::ptr;

    fn last() -> String {
        // SAFETY: nook_last_error never returns NULL; copied at once.
        unsafe { CStr::from_ptr(super::super::api::nook_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn unknown_and_invalid_session_names() {
        let mut s: *mut nook_session = ptr::NonNull::dangling().as_ptr();
        let name = format!("capi-unknown-{}\0", std::process::id());
        // SAFETY: for the calls below, NUL-terminated names, a writable
        // handle pointer.
        unsafe {
            let st = nook_session_open(name.as_ptr().cast(), &mut s);
            assert_eq!(st, nook_status::NOOK_ERR_NOT_FOUND);
            assert!(s.is_null(), "the handle is NULL on a failure");
            assert!(
                last().contains("no session named `capi-unknown-"),
                "{}",
                last()
            );
            let st = nook_session_open(c"../etc".as_ptr(), &mut s);
            assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
            assert!(last().contains("invalid session name"), "{}", last());
            assert_eq!(
                nook_session_open(ptr::null(), &mut s),
                nook_status::NOOK_ERR_INVALID_ARGUMENT
            );
            assert_eq!(last(), "name is a null pointer");
            assert_eq!(
                nook_session_remove(name.as_ptr().cast(), false),
                nook_status::NOOK_ERR_NOT_FOUND
            );
        }
    }

    #[test]
    fn null_handles_are_refused() {
        let argv = [c"true".as_ptr(), ptr::null()];
        let mut out = nook_output::empty();
        // SAFETY: for the calls below, every pointer is null or valid.
        unsafe {
            let st = nook_session_exec(ptr::null(), argv.as_ptr(), ptr::null(), &mut out);
            assert_eq!(st, nook_status::NOOK_ERR_INVALID_ARGUMENT);
            assert_eq!(last(), "session is a null pointer");
            assert_eq!(
                nook_session_stop(ptr::null()),
                nook_status::NOOK_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                nook_session_snapshot(ptr::null(), c"s".as_ptr()),
                nook_status::NOOK_ERR_INVALID_ARGUMENT
            );
            assert!(nook_session_name(ptr::null()).is_null());
            nook_session_free(ptr::null_mut());
        }
    }

    #[test]
    fn a_stopped_session_says_so_on_every_operation() {
        let home = tempfile::tempdir().unwrap();
        let sd = nook_serve::SessionDir::new(home.path(), "gone").unwrap();
        std::fs::create_dir_all(&sd.0).unwrap();
        sd.write_state(&nook_serve::SessionState {
            name: "gone".into(),
            engine: "qemu".into(),
            image: None,
            created_unix: 1,
            memory_mib: 256,
            vcpus: 1,
            pid: std::process::id(),
            state: nook_serve::SessionPhase::Exited,
            exit_reason: Some("stopped".into()),
            published: Vec::new(),
            net: None,
            memory: None,
        })
        .unwrap();
        let handle = Box::into_raw(Box::new(nook_session {
            name: "gone".into(),
            c_name: c"gone".into(),
            home: home.path().to_path_buf(),
        }));
        let argv = [c"true".as_ptr(), ptr::null()];
        let mut out = nook_output::empty();
        let mut bytes = 0u64;
        // SAFETY: for the calls below, a live handle and valid arguments;
        // the handle is freed last.
        unsafe {
            let st = nook_session_exec(handle, argv.as_ptr(), ptr::null(), &mut out);
            assert_eq!(st, nook_status::NOOK_ERR_NOT_RUNNING);
            assert!(
                last().contains("session `gone` is not running"),
                "{}",
                last()
            );
            let st = nook_session_copy_in(
                handle,
                c"/etc/hostname".as_ptr(),
                c"/tmp".as_ptr(),
                &mut bytes,
            );
            assert_eq!(st, nook_status::NOOK_ERR_NOT_RUNNING);
            assert_eq!(
                nook_session_snapshot(handle, c"snap".as_ptr()),
                nook_status::NOOK_ERR_NOT_RUNNING
            );
            // Stopping a stopped session is no error.
            assert_eq!(nook_session_stop(handle), nook_status::NOOK_OK);
            assert_eq!(last(), "");
            assert_eq!(CStr::from_ptr(nook_session_name(handle)), c"gone");
            nook_session_free(handle);
        }
    }
}
