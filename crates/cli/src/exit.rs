//! Exit codes of `nook`: defined once, in `nook::exit_code`.

pub use nook::exit_code::*;

/// Prints an error with its causes, the way every command reports failure.
pub fn report(err: &dyn std::error::Error) {
    eprintln!("nook: {}", chain(err));
}

/// An error and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
