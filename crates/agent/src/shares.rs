//! Host directory shares: `nook.share=TAG:PATH:ro|rw` words of the kernel
//! command line (PATH percent-encoded), each mounted as
//! `mount -t virtiofs TAG PATH` in the final root, read-only for `ro`.
//! The host enforces read-only shares on its side as well; the `ro` mount
//! makes the guest fail early with EROFS instead of asking.

use std::fs;
use std::io;

use nix::mount::{mount, MsFlags};
use nook_proto::ShareMount;

use crate::log;

/// Mounts every share. A share that cannot be mounted is logged and
/// skipped: the command then finds its directory empty (or missing) and
/// the console says why.
pub fn mount_all(shares: &[ShareMount]) {
    for share in shares {
        if let Err(e) = mount_one(share) {
            log(&format!(
                "cannot mount share {} on {}: {e}",
                share.tag, share.path
            ));
        }
    }
}

fn mount_one(share: &ShareMount) -> io::Result<()> {
    fs::create_dir_all(&share.path)?;
    let mut flags = MsFlags::MS_NODEV;
    if share.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(share.tag.as_str()),
        share.path.as_str(),
        Some("virtiofs"),
        flags,
        None::<&str>,
    )
    .map_err(io::Error::from)
}
