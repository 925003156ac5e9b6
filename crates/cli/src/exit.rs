//! Exit codes of `nook`: defined once, in `nook::exit_code`.

pub use nook::exit_code::*;

/// Prints an error with its causes, the way every command reports failure.
pub fn report(err: &dyn std::error::Error) {
    eprintln!("nook: {}", chain(err));
}

/// An error and its causes on one line (with what to do when the disk
/// is full).
pub fn chain(err: &dyn std::error::Error) -> String {
    nook::error_chain(err)
}

/// 0 for `Ok`; for an error, reports it and gives [`NOOK_FAILED`].
pub fn code<T, E: std::error::Error>(result: Result<T, E>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => {
            report(&e);
            NOOK_FAILED
        }
    }
}
