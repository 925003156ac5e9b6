//! Frames through MIT-SHM: the X server writes the image into memory this
//! agent shares with it (a memfd both map), instead of sending megabytes
//! through the X socket. Used when the server offers MIT-SHM with fd
//! passing; plain `GetImage` otherwise.

use std::os::fd::{AsRawFd, OwnedFd};

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{ImageFormat, Window};
use x11rb::rust_connection::RustConnection;

/// A shared segment attached to the X server, mapped here.
#[derive(Debug)]
pub struct ShmSegment {
    seg: shm::Seg,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no other pointer to it
// escapes) and is only read through `&self` between X requests.
unsafe impl Send for ShmSegment {}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped
        // once here; no slice of it outlives `&self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

impl ShmSegment {
    /// A segment of `len` bytes attached to `conn`'s server, or `None` when
    /// the server lacks MIT-SHM 1.2 (fd passing) or refuses it.
    pub fn new(conn: &RustConnection, len: usize) -> Option<ShmSegment> {
        conn.extension_information(shm::X11_EXTENSION_NAME).ok()??;
        let v = conn.shm_query_version().ok()?.reply().ok()?;
        if (v.major_version, v.minor_version) < (1, 2) {
            return None;
        }
        let seg = conn.generate_id().ok()?;
        let fd: OwnedFd =
            nix::sys::memfd::memfd_create(c"nook-desktop", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .ok()?;
        nix::unistd::ftruncate(&fd, len as i64).ok()?;
        // SAFETY: a fresh shared mapping of a file we own, `len` bytes long
        // (just truncated to that size); the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // Unmapped again by its drop if the server refuses it.
        let segment = ShmSegment {
            seg,
            ptr: ptr.cast(),
            len,
        };
        conn.shm_attach_fd(seg, fd, false).ok()?.check().ok()?;
        Some(segment)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Z-format pixels of `[x0, y0, x1, y1]` of `root`, read from the
    /// segment; `None` when the request fails. `&mut`: the next request
    /// rewrites the memory, so no earlier slice may live on.
    pub fn get_image(
        &mut self,
        conn: &RustConnection,
        root: Window,
        region: [u32; 4],
    ) -> Option<&[u8]> {
        let [x0, y0, x1, y1] = region;
        let reply = conn
            .shm_get_image(
                root,
                x0 as i16,
                y0 as i16,
                (x1 - x0) as u16,
                (y1 - y0) as u16,
                !0,
                u8::from(ImageFormat::Z_PIXMAP),
                self.seg,
                0,
            )
            .ok()?
            .reply()
            .ok()?;
        let size = (reply.size as usize).min(self.len);
        // SAFETY: the mapping is `len` bytes long and readable; the server
        // wrote it while processing the request whose reply we now hold and
        // writes it again only for a later request, which needs `&mut self`
        // and so cannot be made while this slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, size) })
    }
}
