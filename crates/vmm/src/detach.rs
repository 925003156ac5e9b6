//! Ending the process without waiting for KVM to tear the VM down.
//!
//! Releasing a KVM VM is slow on some hosts: on this project's reference
//! host (`kvm_pvm`, loaded) closing the VM fd takes 15–25 ms, nearly all
//! of it in the destruction of the in-kernel irqchip and PIT (synchronous
//! grace periods), against 0.1 ms for a VM without them. A process that
//! exits pays this in its `exit_group`, before its parent sees it gone.
//!
//! [`exit_leaving_teardown`] forks a helper that holds the VM fd while the
//! process exits; the helper closes every other descriptor at once (so no
//! pipe of the caller's stays open), waits until the process is gone (a
//! pipe whose only writer was the process reads end-of-file), and exits,
//! which releases the VM in the helper's time instead. Guest memory is
//! marked `MADV_DONTFORK` first, so the fork copies none of it.

use std::os::fd::RawFd;

use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Closes every descriptor of this process but those in `keep` (sorted).
/// Async-signal-safe: only `close_range` system calls.
fn close_all_except(keep: &[RawFd]) {
    let mut first: u32 = 0;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd > first {
            // SAFETY: close_range only closes descriptors; the caller (the
            // forked helper) uses no descriptor outside `keep` afterwards.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
        }
        first = fd.saturating_add(1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// The body of the forked helper: keep `vm_fd`, wait for the parent to be
/// gone, exit. Only async-signal-safe calls (the parent has threads).
fn helper(vm_fd: RawFd, parent_gone: RawFd) -> ! {
    let mut keep = [vm_fd, parent_gone];
    keep.sort_unstable();
    close_all_except(&keep);
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(parent_gone, std::ptr::addr_of_mut!(byte).cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: _exit ends the helper without running the parent's atexit
    // handlers or destructors, which belong to the parent.
    unsafe { libc::_exit(0) }
}

/// Exits the process with `code`, leaving the release of the KVM VM `vm_fd`
/// (and, with it, of the irqchip, PIT and memory slots) to a forked helper
/// that outlives the process by the time that takes. Falls back to a plain
/// exit if the helper cannot be created.
pub(crate) fn exit_leaving_teardown(vm_fd: RawFd, mem: &GuestMemoryMmap, code: i32) -> ! {
    for region in mem.iter() {
        if let Ok(host) = mem.get_host_address(region.start_addr()) {
            // SAFETY: `host..host + len` is one live mapping owned by `mem`;
            // MADV_DONTFORK only changes what a fork copies.
            unsafe {
                libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTFORK);
            }
        }
    }
    let mut pipe = [-1; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
        // SAFETY: the child runs only `helper`, which makes async-signal-safe
        // calls and never returns.
        match unsafe { libc::fork() } {
            0 => helper(vm_fd, pipe[0]),
            pid if pid > 0 => {
                // The write end stays open until this process is gone.
                // SAFETY: closes our copy of the read end, which we own.
                unsafe { libc::close(pipe[0]) };
            }
            _ => {
                tracing::debug!("vmm: cannot fork the teardown helper; exiting with the vm");
            }
        }
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_keeps_only_the_vm_fd_and_leaves_when_the_parent_is_gone() {
        // Stand-ins: a pipe plays the VM fd, whose write end must stay open
        // exactly as long as the helper (its only other holder) lives.
        let mut vm = [-1; 2];
        let mut gone = [-1; 2];
        for p in [&mut vm, &mut gone] {
            // SAFETY: `p` has room for the two descriptors.
            let r = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
            assert_eq!(r, 0);
        }
        // SAFETY: the child runs only `helper` (async-signal-safe calls).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            helper(vm[1], gone[0]);
        }
        assert!(pid > 0);
        // SAFETY: closing our own copies.
        unsafe {
            libc::close(vm[1]);
            libc::close(gone[0]);
        }
        // The helper still holds the "VM": no end-of-file yet.
        let mut pfd = libc::pollfd {
            fd: vm[0],
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 50) }, 0);
        // "Parent gone": the helper exits and releases the "VM".
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(gone[1]) };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(vm[0]) };
    }
}
