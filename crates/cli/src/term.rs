//! The host terminal: raw mode for `-t`, and its size.

use std::io::{IsTerminal, Read, Write};

use rustix::termios::{self, OptionalActions, Termios};

/// Puts stdin's terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> Option<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
pub fn size() -> Option<nook::Winsize> {
    let ws = termios::tcgetwinsize(rustix::stdio::stdout())
        .or_else(|_| termios::tcgetwinsize(rustix::stdio::stdin()))
        .ok()?;
    Some(nook::Winsize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

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

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}
