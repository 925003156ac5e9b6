//! Ctrl-C and window-size changes as counters the shell polls: the shell
//! never dies of SIGINT; the running program gets it instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGWINCH};

/// Counters bumped by SIGINT and SIGWINCH.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    pub interrupts: Arc<AtomicUsize>,
    pub resizes: Arc<AtomicUsize>,
}

impl Signals {
    /// Installs the handlers: a thread named `nook-shell-signals` counts them.
    pub fn install() -> std::io::Result<Signals> {
        let s = Signals::default();
        let (interrupts, resizes) = (s.interrupts.clone(), s.resizes.clone());
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGWINCH])?;
        std::thread::Builder::new()
            .name("nook-shell-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let counter = if sig == SIGINT { &interrupts } else { &resizes };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(s)
    }
}
