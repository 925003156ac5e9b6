//! Progress bars for work a person waits on (download, extract, build):
//! drawn on stderr when it is a terminal and progress was asked for; hidden
//! otherwise, so piped output stays quiet and parseable (the `tracing`
//! debug events carry the same information).

use std::io::{self, IsTerminal, Read, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Makes bars, or hidden bars.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    enabled: bool,
}

impl Progress {
    /// Bars are drawn only if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && io::stderr().is_terminal(),
        }
    }

    /// A spinner for work of unknown length.
    pub fn spinner(&self, message: String) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A byte-counting bar of `len` bytes (0: unknown, drawn as a spinner).
    pub fn bar(&self, len: u64, message: &'static str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = if len == 0 {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::new(len)
        };
        let template = if len == 0 {
            "{spinner} {msg} {bytes} {elapsed}"
        } else {
            "{msg:20} [{bar:30}] {bytes}/{total_bytes} {eta}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// A reader that advances a bar by the bytes it reads.
#[derive(Debug)]
pub(crate) struct ProgressRead<R> {
    pub inner: R,
    pub bar: ProgressBar,
}

impl<R: Read> Read for ProgressRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// A writer that advances a bar by the bytes it writes.
#[derive(Debug)]
pub(crate) struct ProgressWrite<W> {
    pub inner: W,
    pub bar: ProgressBar,
}

impl<W: Write> Write for ProgressWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
