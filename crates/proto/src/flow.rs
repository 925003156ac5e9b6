//! Flow control: credit-based windows on every data pipe of an exec.
//!
//! Each pipe (stdin, stdout, stderr) has a producer and a consumer on
//! opposite sides of the channel. The producer starts with
//! [`PIPE_WINDOW`] bytes of credit and spends it on every data byte it
//! sends; the consumer gives credit back with a [`Credit`] message as its
//! reader takes bytes. A producer without credit waits (and so does the
//! program feeding it: a guest command blocks in `write`, a host writer in
//! `ChildStdin::write`), so a slow or stuck consumer bounds what is held in
//! memory on either side to one window per pipe.
//!
//! A consumer that will take no more (the reader closed its end) says so
//! with [`PipeClosed`]; the producer then stops and drops what it has.
//!
//! [`SendCredit`] is the producer's account, [`RecvWindow`] the
//! consumer's: it also checks that the peer stays inside its window, so a
//! misbehaving peer is detected instead of buffered.

use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};

/// Bytes a producer may have in flight on one pipe before the consumer
/// grants more: the most either side ever buffers for a pipe.
pub const PIPE_WINDOW: u64 = 256 * 1024;

/// A consumer grants credit back once it has consumed this much (not
/// after every chunk: one `Credit` frame per quarter window).
pub const CREDIT_BATCH: u64 = PIPE_WINDOW / 4;

/// The data pipes of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pipe {
    Stdin,
    Stdout,
    Stderr,
    /// A pipe this side does not know (named by a newer peer): ignored.
    #[serde(other)]
    Other,
}

/// The consumer of `pipe` took `bytes` more: the producer may send that
/// many more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub pipe: Pipe,
    pub bytes: u64,
}

/// The consumer of `pipe` is gone (its reader closed): the producer stops
/// sending on it. For a guest command's stdout or stderr the agent closes
/// the pipe's read end, so the command gets `EPIPE`/`SIGPIPE` as it would
/// writing into a closed shell pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeClosed {
    pub pipe: Pipe,
}

/// The peer sent more than its window allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer sent {sent} bytes with only {allowed} bytes of credit left")]
pub struct WindowOverrun {
    pub sent: u64,
    pub allowed: u64,
}

/// The producer's account of one pipe: how much it may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCredit {
    available: u64,
}

impl Default for SendCredit {
    fn default() -> Self {
        SendCredit::new()
    }
}

impl SendCredit {
    /// A fresh pipe: one whole window.
    pub fn new() -> SendCredit {
        SendCredit {
            available: PIPE_WINDOW,
        }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// Takes credit for up to `want` bytes; returns how many may be sent
    /// (0 when there is no credit: wait for a [`Credit`]).
    pub fn take(&mut self, want: usize) -> usize {
        let n = (want as u64).min(self.available);
        self.available -= n;
        // n <= want, which is a usize.
        n as usize
    }

    /// Gives back credit taken with [`SendCredit::take`] but not used.
    pub fn refund(&mut self, bytes: usize) {
        self.grant(bytes as u64);
    }

    /// The consumer granted `bytes` more. Never grows past one window: a
    /// peer granting more than it could have consumed gains nothing.
    pub fn grant(&mut self, bytes: u64) {
        self.available = self.available.saturating_add(bytes).min(PIPE_WINDOW);
    }
}

/// The consumer's account of one pipe: bytes received and not yet granted
/// back, and bytes consumed since the last grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    pipe: Pipe,
    outstanding: u64,
    consumed: u64,
}

impl RecvWindow {
    pub fn new(pipe: Pipe) -> RecvWindow {
        RecvWindow {
            pipe,
            outstanding: 0,
            consumed: 0,
        }
    }

    /// Accounts for `bytes` of data that arrived; an error when the peer
    /// overran its window (the data must then be dropped, not buffered).
    pub fn receive(&mut self, bytes: usize) -> Result<(), WindowOverrun> {
        let allowed = PIPE_WINDOW - self.outstanding;
        let sent = bytes as u64;
        if sent > allowed {
            return Err(WindowOverrun { sent, allowed });
        }
        self.outstanding += sent;
        Ok(())
    }

    /// The reader took `bytes`; returns the credit to send back, when a
    /// batch's worth has been consumed.
    pub fn consume(&mut self, bytes: usize) -> Option<Credit> {
        self.consumed = (self.consumed + bytes as u64).min(self.outstanding);
        (self.consumed >= CREDIT_BATCH).then(|| self.flush())
    }

    /// Returns the credit for everything consumed so far, if any (also
    /// below a batch: for a reader that goes idle).
    pub fn flush_credit(&mut self) -> Option<Credit> {
        (self.consumed > 0).then(|| self.flush())
    }

    fn flush(&mut self) -> Credit {
        let bytes = std::mem::take(&mut self.consumed);
        self.outstanding -= bytes;
        Credit {
            pipe: self.pipe,
            bytes,
        }
    }

    /// Bytes received and not yet granted back.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }
}

/// A producer's [`SendCredit`] shared between the thread that sends data
/// (and waits for credit) and the thread that reads the peer's `Credit`
/// and `PipeClosed` messages. Closing it wakes the producer for good.
#[derive(Debug, Default)]
pub struct CreditGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    credit: SendCredit,
    closed: bool,
}

impl CreditGate {
    pub fn new() -> CreditGate {
        CreditGate::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until there is credit, then takes it for up to `max` bytes.
    /// `None` once the gate is closed (the consumer is gone).
    pub fn acquire(&self, max: usize) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if st.credit.available() > 0 {
                return Some(st.credit.take(max));
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Gives back credit acquired but not used.
    pub fn refund(&self, bytes: usize) {
        self.lock().credit.refund(bytes);
    }

    /// The consumer granted more.
    pub fn grant(&self, bytes: u64) {
        self.lock().credit.grant(bytes);
        self.changed.notify_all();
    }

    /// The consumer is gone, or the pipe ended: every waiter returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_producer_without_credit_sends_nothing() {
        let mut c = SendCredit::new();
        assert_eq!(c.take(usize::MAX), PIPE_WINDOW as usize);
        assert_eq!(c.take(10), 0);
        c.grant(5);
        assert_eq!(c.take(10), 5);
        c.refund(2);
        assert_eq!(c.available(), 2);
        c.grant(u64::MAX);
        assert_eq!(c.available(), PIPE_WINDOW);
    }

    #[test]
    fn an_overrun_is_detected_and_not_counted() {
        let mut w = RecvWindow::new(Pipe::Stdout);
        w.receive(PIPE_WINDOW as usize - 1).unwrap();
        let e = w.receive(2).unwrap_err();
        assert_eq!(e.allowed, 1);
        assert_eq!(w.outstanding(), PIPE_WINDOW - 1);
        w.receive(1).unwrap();
    }

    #[test]
    fn credit_comes_back_in_batches() {
        let mut w = RecvWindow::new(Pipe::Stdout);
        w.receive(PIPE_WINDOW as usize).unwrap();
        assert_eq!(w.consume(CREDIT_BATCH as usize - 1), None);
        let c = w.consume(1).unwrap();
        assert_eq!(
            c,
            Credit {
                pipe: Pipe::Stdout,
                bytes: CREDIT_BATCH
            }
        );
        assert_eq!(w.outstanding(), PIPE_WINDOW - CREDIT_BATCH);
        assert_eq!(w.flush_credit(), None);
        w.consume(3);
        assert_eq!(w.flush_credit().unwrap().bytes, 3);
    }

    #[test]
    fn consuming_more_than_was_received_grants_only_what_was_received() {
        let mut w = RecvWindow::new(Pipe::Stdout);
        w.receive(10).unwrap();
        assert_eq!(w.consume(1 << 30), None);
        assert_eq!(w.flush_credit().unwrap().bytes, 10);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn a_gate_blocks_until_credit_or_close() {
        use std::sync::Arc;
        let gate = Arc::new(CreditGate::new());
        assert_eq!(gate.acquire(usize::MAX), Some(PIPE_WINDOW as usize));
        let g = gate.clone();
        let waiter = std::thread::spawn(move || (g.acquire(100), g.acquire(100)));
        std::thread::sleep(std::time::Duration::from_millis(50));
        gate.grant(30);
        std::thread::sleep(std::time::Duration::from_millis(50));
        gate.close();
        assert_eq!(waiter.join().unwrap(), (Some(30), None));
        assert!(gate.is_closed());
    }

    proptest! {
        /// A producer and a consumer that follow the rules never overrun,
        /// never hold more than a window, and never stall while the
        /// consumer keeps reading.
        #[test]
        fn honest_peers_never_overrun_or_stall(
            writes in proptest::collection::vec(1usize..100_000, 1..200),
            reads in proptest::collection::vec(1usize..100_000, 1..200),
        ) {
            let mut tx = SendCredit::new();
            let mut rx = RecvWindow::new(Pipe::Stdout);
            let mut queued: u64 = 0; // received, not yet read
            let mut reads = reads.into_iter().cycle();
            for w in writes {
                let mut left = w;
                while left > 0 {
                    let n = tx.take(left);
                    if n == 0 {
                        // Stalled: the consumer must be holding data.
                        prop_assert!(queued > 0 || rx.outstanding() > 0);
                        let r = reads.next().unwrap().min(queued as usize);
                        queued -= r as u64;
                        let credit = rx.consume(r).or_else(|| (queued == 0).then(|| rx.flush_credit()).flatten());
                        if let Some(c) = credit {
                            tx.grant(c.bytes);
                        }
                        continue;
                    }
                    rx.receive(n).unwrap();
                    queued += n as u64;
                    prop_assert!(rx.outstanding() <= PIPE_WINDOW);
                    left -= n;
                }
            }
        }
    }
}
