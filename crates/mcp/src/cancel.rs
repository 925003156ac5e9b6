//! Cancelling a tool call that runs on a blocking thread: the client's
//! `notifications/cancelled` (or the server going away) fires the hook the
//! call registered, which kills its command or abandons its boot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

type Hook = Box<dyn FnOnce() + Send>;

/// A cancellation flag with one hook.
#[derive(Default)]
pub struct Cancel {
    fired: AtomicBool,
    hook: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("fired", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// Runs `f` when the call is cancelled (at once if it already was);
    /// replaces the hook registered before.
    pub fn on_cancel(&self, f: impl FnOnce() + Send + 'static) {
        let mut hook = self.hook.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            drop(hook);
            f();
        } else {
            *hook = Some(Box::new(f));
        }
    }

    /// Cancels the call: runs its hook once.
    pub fn fire(&self) {
        let hook = {
            let mut hook = self.hook.lock().unwrap_or_else(|p| p.into_inner());
            self.fired.store(true, Ordering::SeqCst);
            hook.take()
        };
        if let Some(f) = hook {
            f();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn the_hook_runs_once_and_late_hooks_run_at_once() {
        let c = Cancel::default();
        let n = Arc::new(AtomicUsize::new(0));
        let n1 = n.clone();
        c.on_cancel(move || {
            n1.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 0);
        c.fire();
        c.fire();
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let n2 = n.clone();
        c.on_cancel(move || {
            n2.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 11);
        assert!(c.is_cancelled());
    }
}
