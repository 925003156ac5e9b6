//! A process-wide on/off switch read once from an environment variable
//! (`NOOK_NO_SECCOMP`, `NOOK_NO_CONFINE`), overridable from code.

use std::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// On unless its variable is `1` or it was set off.
#[derive(Debug)]
pub(crate) struct Switch {
    state: AtomicU8,
    /// The variable that turns it off when `1`.
    off_var: &'static str,
}

impl Switch {
    pub(crate) const fn new(off_var: &'static str) -> Switch {
        Switch {
            state: AtomicU8::new(UNSET),
            off_var,
        }
    }

    pub(crate) fn set(&self, on: bool) {
        self.state
            .store(if on { ON } else { OFF }, Ordering::SeqCst);
    }

    pub(crate) fn on(&self) -> bool {
        match self.state.load(Ordering::SeqCst) {
            ON => true,
            OFF => false,
            _ => {
                let off = std::env::var_os(self.off_var).is_some_and(|v| v == "1");
                let _ = self.state.compare_exchange(
                    UNSET,
                    if off { OFF } else { ON },
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                self.state.load(Ordering::SeqCst) == ON
            }
        }
    }
}
