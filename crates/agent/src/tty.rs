//! Pseudo-terminals for `tty` execs.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::pty::{openpty, Winsize as PtyWinsize};
use nook_proto::Winsize;

nix::ioctl_write_ptr_bad!(set_winsize_ioctl, libc::TIOCSWINSZ, libc::winsize);

fn to_pty(ws: Winsize) -> PtyWinsize {
    PtyWinsize {
        ws_row: ws.rows,
        ws_col: ws.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a pty of the given size and wires `cmd` to its slave side as a new
/// session leader with the pty as controlling terminal. Returns the master.
pub fn attach(cmd: &mut Command, ws: Winsize) -> io::Result<OwnedFd> {
    let pty = openpty(Some(&to_pty(ws)), None).map_err(io::Error::from)?;
    let slave = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl) on fd 0, which the child
    // already has as the pty slave; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(pty.master)
}

/// Applies a new window size to the pty behind `master`.
pub fn resize(master: &OwnedFd, ws: Winsize) -> io::Result<()> {
    let w = to_pty(ws);
    // SAFETY: `master` is an open pty master fd owned by the caller and `w`
    // is a valid winsize that outlives the call; TIOCSWINSZ only reads it.
    unsafe { set_winsize_ioctl(master.as_raw_fd(), &w) }.map_err(io::Error::from)?;
    Ok(())
}
