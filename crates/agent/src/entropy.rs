//! Reseeding the guest's random number generator after a restore: clones of
//! one snapshot start with identical CRNG state, so each gets fresh host
//! entropy and a forced reseed before it runs anything.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('R', 0x03, int[2])`: add entropy with credit (CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG now (CAP_SYS_ADMIN).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

pub fn reseed(entropy: &[u8]) -> io::Result<()> {
    let dev = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = entropy.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (entropy.len() * 8) as u32;
    info[1] = entropy.len() as u32;
    for (i, chunk) in entropy.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `info` is a live, correctly laid out rand_pool_info whose
    // buf_size (info[1]) does not exceed the words that follow it; the
    // kernel only reads it during the call, and `dev` is an open fd.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
