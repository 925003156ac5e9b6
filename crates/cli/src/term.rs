//! The host terminal: raw mode for `-t`, and its size.

pub use nook_shell::term::{size, stdin_is_tty, RawMode};
