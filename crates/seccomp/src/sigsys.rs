//! The `SIGSYS` handler: a call outside a thread's filter is reported in
//! one line on stderr, then the process ends. Everything here runs inside
//! a signal handler: no allocation, no locks, only `write` and `exit_group`
//! (both on every allow-list).

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

use libc::{c_int, c_void, siginfo_t};

use crate::names::SYSCALL_NAMES;

/// The exit code of a process ended by a seccomp violation: 128 + SIGSYS,
/// as a shell reports a process killed by that signal.
pub const SIGSYS_EXIT_CODE: i32 = 128 + libc::SIGSYS;

const UNFILTERED: &str = "unfiltered";

thread_local! {
    static FILTER: Cell<&'static str> = const { Cell::new(UNFILTERED) };
}

/// The filter of the whole process, for threads without one of their own
/// (a leaked `&'static str`, or null).
static PROCESS_FILTER: AtomicPtr<&'static str> = AtomicPtr::new(std::ptr::null_mut());

/// Records the calling thread's filter name for the report.
pub(crate) fn set_thread_filter(name: &'static str) {
    FILTER.with(|f| f.set(name));
}

/// Records the filter every thread of the process runs under.
pub(crate) fn set_process_filter(name: &'static str) {
    let boxed: &'static mut &'static str = Box::leak(Box::new(name));
    PROCESS_FILTER.store(boxed, Ordering::SeqCst);
}

/// The name the report gives the calling thread's filter.
fn filter_name() -> &'static str {
    let own = FILTER.with(Cell::get);
    if own != UNFILTERED {
        return own;
    }
    let p = PROCESS_FILTER.load(Ordering::SeqCst);
    if p.is_null() {
        UNFILTERED
    } else {
        // SAFETY: a non-null pointer here was leaked by
        // `set_process_filter` and is never freed.
        unsafe { *p }
    }
}

/// The name of x86_64 system call `nr`, if known.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| SYSCALL_NAMES[i].1)
}

/// A fixed buffer the handler formats its line into.
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_dec(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }

    fn push_hex(&mut self, mut v: u64) {
        let mut d = [0u8; 16];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x");
        self.push(&d[i..]);
    }
}

/// Offset of `si_syscall` in a `SIGSYS` `siginfo_t` on x86_64 (after
/// `si_signo`, `si_errno`, `si_code`, padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn handle_sigsys(_: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; the syscall
    // number is an i32 at a fixed offset of it on x86_64.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let (a0, a1) = if ctx.is_null() {
        (0, 0)
    } else {
        // SAFETY: with SA_SIGINFO the third argument is the interrupted
        // context, a `ucontext_t` the kernel set up on this stack.
        let g = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        (
            g[libc::REG_RDI as usize] as u64,
            g[libc::REG_RSI as usize] as u64,
        )
    };
    let mut line = Line {
        buf: [0; 320],
        len: 0,
    };
    line.push(b"nook: seccomp: a thread under filter `");
    line.push(filter_name().as_bytes());
    line.push(b"` made system call ");
    line.push_dec(u64::from(nr as u32));
    line.push(b" (");
    line.push(syscall_name(nr as u32).unwrap_or("unknown").as_bytes());
    line.push(b", args ");
    line.push_hex(a0);
    line.push(b", ");
    line.push_hex(a1);
    line.push(b"), which the filter does not allow: ending the process");
    line.push(b" (NOOK_NO_SECCOMP=1 turns filters off, for debugging only)\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

/// Installs the handler for the process, once.
pub(crate) fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler
        // has the SA_SIGINFO signature and only makes async-signal-safe
        // calls.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handle_sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names_are_found_by_number() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(41), Some("socket"));
        assert_eq!(syscall_name(59), Some("execve"));
        assert_eq!(syscall_name(100_000), None);
        assert!(SYSCALL_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn the_report_line_formats_numbers() {
        let mut l = Line {
            buf: [0; 320],
            len: 0,
        };
        l.push_dec(0);
        l.push(b" ");
        l.push_dec(41);
        l.push(b" ");
        l.push_hex(0xae80);
        assert_eq!(&l.buf[..l.len], b"0 41 0xae80");
    }
}
