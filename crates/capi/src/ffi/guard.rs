//! The edge of every call: the calling thread's last error, and panics
//! caught before they reach C.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::status::{nook_status, CapiError};

thread_local! {
    /// The message of this thread's last failed call; empty after a call
    /// that worked.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A NUL inside would cut the C string short: show it as a space.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// This thread's last error message; valid until this thread's next call.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// What a panic said.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs the body of an `extern "C"` function: clears the thread's last
/// error, catches a panic (`NOOK_ERR_INTERNAL` with its message), and
/// turns an error into its status and message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), CapiError>) -> nook_status {
    set_last_error("");
    // The body's captures are either owned or borrowed from C for this
    // call only; a panic leaves nothing of them in use afterwards.
    let result = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(CapiError::Panic(panic_message(payload.as_ref()))));
    match result {
        Ok(()) => nook_status::NOOK_OK,
        Err(e) => fail(&e),
    }
}

/// Records `e` as the thread's last error; its status.
pub(crate) fn fail(e: &CapiError) -> nook_status {
    set_last_error(&e.message());
    e.status()
}

/// [`guard`] for the few functions that return no status: the panic (if
/// any) is recorded and `fallback` returned.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            fail(&CapiError::Panic(panic_message(payload.as_ref())));
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: `last_error` points at this thread's live CString, and
        // nothing on this thread replaces it before the copy is made.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let status = guard(|| panic!("boom {}", 42));
        assert_eq!(status, nook_status::NOOK_ERR_INTERNAL);
        assert_eq!(last(), "nook panicked: boom 42");
        assert_eq!(guard_value(7, || panic!("again")), 7);
        assert_eq!(last(), "nook panicked: again");
    }

    #[test]
    fn a_call_that_works_clears_the_last_error() {
        assert_eq!(
            guard(|| Err(CapiError::Null("argv"))),
            nook_status::NOOK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last(), "argv is a null pointer");
        assert_eq!(guard(|| Ok(())), nook_status::NOOK_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn the_last_error_is_per_thread() {
        guard(|| Err(CapiError::Null("here")));
        std::thread::spawn(|| {
            assert_eq!(last(), "");
            guard(|| Err(CapiError::Null("there")));
            assert_eq!(last(), "there is a null pointer");
        })
        .join()
        .unwrap();
        assert_eq!(last(), "here is a null pointer");
    }

    #[test]
    fn a_nul_in_a_message_does_not_cut_it() {
        guard(|| {
            Err(CapiError::Invalid {
                what: "x",
                why: "a\0b".into(),
            })
        });
        assert_eq!(last(), "invalid x: a b");
    }
}
