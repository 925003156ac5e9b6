//! Reading what C passes: strings, string lists, byte buffers and
//! out-parameters, each checked for null and (strings) UTF-8.

use std::ffi::{c_char, CStr};

use crate::status::CapiError;

/// Most entries a NULL-terminated list may have: a list without its NULL
/// is a caller bug that this bounds (it is still undefined behaviour).
const MAX_LIST: usize = 1 << 16;

/// The string at `p`, which must not be null.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(
    p: *const c_char,
    what: &'static str,
) -> Result<&'a str, CapiError> {
    if p.is_null() {
        return Err(CapiError::Null(what));
    }
    // SAFETY: `p` is not null, and the caller guarantees it points at a
    // NUL-terminated string valid for `'a`.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| CapiError::Utf8(what))
}

/// The string at `p`, or `None` when `p` is null.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg(
    p: *const c_char,
    what: &'static str,
) -> Result<Option<String>, CapiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { str_arg(p, what) }.map(|s| Some(s.to_string()))
}

/// The strings of the NULL-terminated list at `p` (none when `p` is null).
///
/// # Safety
/// `p` is null or points at an array of string pointers (as [`str_arg`])
/// ended by a null pointer, valid for the call.
pub(crate) unsafe fn str_list(
    p: *const *const c_char,
    what: &'static str,
) -> Result<Vec<String>, CapiError> {
    let mut out = Vec::new();
    if p.is_null() {
        return Ok(out);
    }
    for i in 0..MAX_LIST {
        // SAFETY: the array is NULL-terminated and entries before the
        // terminator are readable; `i` never passes the terminator
        // because the loop stops at it.
        let entry = unsafe { *p.add(i) };
        if entry.is_null() {
            return Ok(out);
        }
        // SAFETY: a non-null entry is a valid string (the caller's promise).
        out.push(unsafe { str_arg(entry, what) }?.to_string());
    }
    Err(CapiError::Invalid {
        what,
        why: format!("more than {MAX_LIST} entries, or no terminating NULL"),
    })
}

/// The `len` bytes at `p`; `None` when `p` is null and `len` is 0.
///
/// # Safety
/// `p` is null or points at `len` readable bytes, valid for the call.
pub(crate) unsafe fn bytes_arg(
    p: *const u8,
    len: usize,
    what: &'static str,
) -> Result<Option<Vec<u8>>, CapiError> {
    if p.is_null() {
        return match len {
            0 => Ok(None),
            _ => Err(CapiError::Null(what)),
        };
    }
    // SAFETY: `p` is not null and points at `len` readable bytes (the
    // caller's promise).
    Ok(Some(unsafe { std::slice::from_raw_parts(p, len) }.to_vec()))
}

/// The object `p` points at, or `None` when it is null.
///
/// # Safety
/// `p` is null or points at a valid, initialised `T` that nothing
/// mutates during the call.
pub(crate) unsafe fn opt_ref<'a, T>(p: *const T) -> Option<&'a T> {
    // SAFETY: the caller's promise: null or a valid `T`.
    unsafe { p.as_ref() }
}

/// The object `p` points at, which must not be null.
///
/// # Safety
/// As [`opt_ref`].
pub(crate) unsafe fn ref_arg<'a, T>(p: *const T, what: &'static str) -> Result<&'a T, CapiError> {
    // SAFETY: forwarded from the caller.
    unsafe { opt_ref(p) }.ok_or(CapiError::Null(what))
}

/// Writes `value` to the out-parameter `p`, which must not be null.
///
/// # Safety
/// `p` is null or points at writable memory for a `T` (its old contents
/// are overwritten, not dropped).
pub(crate) unsafe fn write_out<T>(
    p: *mut T,
    what: &'static str,
    value: T,
) -> Result<(), CapiError> {
    if p.is_null() {
        return Err(CapiError::Null(what));
    }
    // SAFETY: `p` is not null and writable for a `T` (the caller's promise).
    unsafe { p.write(value) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    #[test]
    fn strings_are_checked_for_null_and_utf8() {
        // SAFETY: for the calls below, every pointer is null or points at
        // a NUL-terminated literal.
        unsafe {
            assert_eq!(str_arg(c"hi".as_ptr(), "s").unwrap(), "hi");
            assert!(matches!(
                str_arg(ptr::null(), "s"),
                Err(CapiError::Null("s"))
            ));
            let bad = b"\xff\xfe\0";
            assert!(matches!(
                str_arg(bad.as_ptr().cast(), "s"),
                Err(CapiError::Utf8("s"))
            ));
            assert_eq!(opt_str_arg(ptr::null(), "s").unwrap(), None);
        }
    }

    #[test]
    fn lists_end_at_their_null() {
        let list = [c"a".as_ptr(), c"b c".as_ptr(), ptr::null()];
        // SAFETY: a NULL-terminated array of literals; and a null list.
        unsafe {
            assert_eq!(str_list(list.as_ptr(), "argv").unwrap(), ["a", "b c"]);
            assert!(str_list(ptr::null(), "argv").unwrap().is_empty());
        }
    }

    #[test]
    fn byte_buffers_may_be_absent_only_when_empty() {
        let data = [1u8, 2, 3];
        // SAFETY: `data` has 3 readable bytes; the null pointers are
        // rejected or read as nothing.
        unsafe {
            assert_eq!(bytes_arg(data.as_ptr(), 3, "b").unwrap().unwrap(), data);
            assert_eq!(bytes_arg(ptr::null(), 0, "b").unwrap(), None);
            assert!(matches!(
                bytes_arg(ptr::null(), 2, "b"),
                Err(CapiError::Null("b"))
            ));
        }
    }

    #[test]
    fn out_parameters_must_not_be_null() {
        let mut x = 0u64;
        // SAFETY: `x` is writable; the null pointer is rejected.
        unsafe {
            write_out(&mut x, "x", 5).unwrap();
            assert!(matches!(
                write_out(ptr::null_mut::<u64>(), "x", 5),
                Err(CapiError::Null("x"))
            ));
        }
        assert_eq!(x, 5);
    }
}
