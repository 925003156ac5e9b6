//! Where a command's output goes inside the shell: the shell's own stdout
//! or stderr, or a buffer (a pipe to the next stage, a redirect to a file).

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;

/// One output stream of a command.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    Buffer(Rc<RefCell<Vec<u8>>>),
}

impl Sink {
    pub fn buffer() -> Sink {
        Sink::Buffer(Rc::new(RefCell::new(Vec::new())))
    }

    /// The buffered bytes (empty for the shell's own streams).
    pub fn take(&self) -> Vec<u8> {
        match self {
            Sink::Buffer(b) => std::mem::take(&mut *b.borrow_mut()),
            _ => Vec::new(),
        }
    }

    /// Whether it is the shell's terminal-facing stdout.
    pub fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout)
    }

    /// Writes, ignoring a closed reader (as `EPIPE` would end a builtin).
    pub fn put(&self, bytes: &[u8]) {
        let _ = SinkWriter(self.clone()).write_all(bytes);
    }

    pub fn writer(&self) -> SinkWriter {
        SinkWriter(self.clone())
    }
}

/// [`Write`] onto a [`Sink`]; the shell's streams are flushed at once so
/// output interleaves as it happens.
#[derive(Debug)]
pub struct SinkWriter(Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
            }
            Sink::Stderr => io::stderr().write_all(buf)?,
            Sink::Buffer(b) => b.borrow_mut().extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A command's three streams.
#[derive(Debug, Clone)]
pub struct Io {
    /// `None`: the shell's own stdin.
    pub stdin: Option<Rc<Vec<u8>>>,
    pub stdout: Sink,
    pub stderr: Sink,
}

impl Io {
    /// The shell's own streams.
    pub fn shell() -> Io {
        Io {
            stdin: None,
            stdout: Sink::Stdout,
            stderr: Sink::Stderr,
        }
    }
}
