//! The host terminal: raw mode for `-t`, and its size.

use std::io::{Read, Write};

pub use nook_shell::term::{size, stdin_is_tty, RawMode};

/// Copies this process's stdin to `sink` on a thread named `nook-stdin`;
/// at end of input (not after a failed write) calls `close` with it.
pub fn forward_stdin<W: Write + Send + 'static>(
    mut sink: W,
    close: impl FnOnce(W) + Send + 'static,
) {
    let _ = std::thread::Builder::new()
        .name("nook-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            close(sink);
        });
}
