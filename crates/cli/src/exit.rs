//! Documented exit codes of `nook`.

pub use nook::exit_code::*;

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
