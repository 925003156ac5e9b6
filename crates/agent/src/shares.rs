//! Host directory shares: `nook.share=TAG:PATH:ro|rw` words of the kernel
//! command line (PATH percent-encoded), each mounted as
//! `mount -t virtiofs TAG PATH` in the final root, read-only for `ro`.
//! The host enforces read-only shares on its side as well; the `ro` mount
//! makes the guest fail early with EROFS instead of asking.

use std::fs;
use std::io;

use nix::mount::{mount, MsFlags};

use crate::log;
use crate::storage::percent_decode;

/// A share to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
}

/// The shares named on the kernel command line.
pub fn parse(cmdline: &str) -> Result<Vec<ShareMount>, String> {
    let mut out = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(spec) = word.strip_prefix("nook.share=") else {
            continue;
        };
        let mut fields = spec.split(':');
        let (Some(tag), Some(path), Some(mode), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("bad share `{word}`: expected TAG:PATH:ro|rw"));
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(format!("bad share `{word}`: mode must be ro or rw")),
        };
        let path = percent_decode(path).ok_or_else(|| format!("bad share path in `{word}`"))?;
        if tag.is_empty() || !path.starts_with('/') {
            return Err(format!("bad share `{word}`: empty tag or relative path"));
        }
        out.push(ShareMount {
            tag: tag.to_owned(),
            path,
            read_only,
        });
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_share_words() {
        let cmd = "console=ttyS0 nook.share=nook0:/mnt/a%20b:ro quiet nook.share=nook1:/w:rw";
        assert_eq!(
            parse(cmd).unwrap(),
            vec![
                ShareMount {
                    tag: "nook0".into(),
                    path: "/mnt/a b".into(),
                    read_only: true
                },
                ShareMount {
                    tag: "nook1".into(),
                    path: "/w".into(),
                    read_only: false
                },
            ]
        );
        assert!(parse("quiet").unwrap().is_empty());
        for bad in [
            "nook.share=t:/p",
            "nook.share=t:/p:rx",
            "nook.share=t:rel:ro",
            "nook.share=:/p:ro",
            "nook.share=t:/p:ro:x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
