//! The two system calls the snapshot code needs that std does not wrap:
//! sending a file descriptor over a Unix socket (`SCM_RIGHTS`, for QMP's
//! `getfd`) and finding the data regions of a sparse file
//! (`SEEK_DATA`/`SEEK_HOLE`, to copy guest RAM without its holes).

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Sends `data` with `fd` attached as `SCM_RIGHTS` in one `sendmsg`.
/// Returns how many bytes of `data` went out (the descriptor travels with the
/// first byte; the caller writes the rest, if any, normally).
pub(crate) fn send_with_fd(
    stream: &UnixStream,
    data: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    const FD_LEN: u32 = std::mem::size_of::<RawFd>() as u32;
    // Room for one cmsghdr carrying one descriptor, 8-byte aligned as the
    // CMSG_* macros require.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_LEN) } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(io::Error::other("control buffer too small for SCM_RIGHTS"));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value
    // (no name, no iovecs, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `control`, which is aligned and at least
    // CMSG_SPACE(FD_LEN) bytes long (checked above), so CMSG_FIRSTHDR returns
    // a non-null pointer to a cmsghdr inside it, and CMSG_DATA points at
    // FD_LEN writable bytes after that header within the same buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the SCM_RIGHTS header"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_LEN) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` and everything it points to (`iov` over `data`,
        // `control`) outlive the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The start of the first data region at or after `offset`, or `None` if
/// only a hole follows (`SEEK_DATA`). File systems without hole support
/// report the whole file as data.
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

/// The start of the first hole at or after `offset` (`SEEK_HOLE`); the end
/// of the file counts as a hole.
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_HOLE)
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor we borrow only moves its file offset;
    // the callers use positioned reads, so the offset does not matter.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if pos >= 0 {
        return Ok(Some(pos as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;

    fn recv_fd(stream: &UnixStream, buf: &mut [u8]) -> (usize, Option<OwnedFd>) {
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero msghdr is valid; filled in below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "{}", io::Error::last_os_error());
        // SAFETY: recvmsg filled `control`; CMSG_FIRSTHDR/CMSG_DATA stay in it.
        let fd = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS).then(|| {
                OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                ))
            })
        };
        (n as usize, fd)
    }

    #[test]
    fn descriptor_travels_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut keep, give) = UnixStream::pair().unwrap();
        let sent = send_with_fd(&a, b"getfd\n", give.as_fd()).unwrap();
        assert_eq!(sent, 6);
        drop(give);
        let mut buf = [0u8; 16];
        let (n, fd) = recv_fd(&b, &mut buf);
        assert_eq!(&buf[..n], b"getfd\n");
        let mut received = UnixStream::from(fd.expect("an fd arrived"));
        received.write_all(b"through the passed fd").unwrap();
        drop(received);
        let mut got = String::new();
        keep.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the passed fd");
    }

    #[test]
    fn seek_finds_data_and_holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("sparse"))
            .unwrap();
        let mib = 1u64 << 20;
        file.set_len(8 * mib).unwrap();
        file.write_all_at(b"data", 4 * mib).unwrap();
        let data = seek_data(&file, 0).unwrap().unwrap();
        // Either the file system tracks holes (data starts in the 4th MiB) or
        // it reports everything as data.
        assert!(data == 0 || (data <= 4 * mib && data > 2 * mib), "{data}");
        let hole = seek_hole(&file, 4 * mib).unwrap().unwrap();
        assert!(hole > 4 * mib, "{hole}");
        assert_eq!(seek_data(&file, 8 * mib).unwrap(), None);
    }
}
