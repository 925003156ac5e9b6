//! One share served to an in-process virtio-fs device (the kvm engine's
//! VMM): a whole FUSE request in as bytes, the reply out as bytes, through
//! the same guarded passthrough file system the vhost-user server uses.
//!
//! The device copies each request out of guest memory and the reply back
//! in, so this side never touches guest memory (the VMM's `vm-memory` is a
//! different release from the one `fuse-backend-rs` is built against). The
//! FUSE server answers through its `/dev/fuse` transport, whose writer
//! sends each reply to a file descriptor in one write: here an unnamed
//! tmpfs file that is read back and emptied for every request.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};

use crate::backend::{FsMetrics, ShareFs};
use crate::config::Share;
use crate::error::FsError;
use crate::server::share_fs;

/// Largest FUSE message either way: 1 MiB of data (the server's
/// `max_write`/`max_read`) plus a page of headers.
pub const MAX_MESSAGE_BYTES: usize = (1 << 20) + 4096;

/// A share answering FUSE requests given as bytes.
pub struct FuseSession {
    server: Server<Arc<ShareFs>>,
    fs: Arc<ShareFs>,
    /// Where the FUSE writer puts each reply; the lock serializes requests
    /// (one reply in it at a time).
    replies: Mutex<File>,
    metrics: FsMetrics,
    reach: nook_seccomp::FsReach,
}

impl std::fmt::Debug for FuseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseSession")
            .field("read_only", &self.fs.read_only())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// An unnamed file in memory (tmpfs), else in the temporary directory.
fn reply_file() -> io::Result<File> {
    let open = |dir: &std::path::Path| {
        File::options()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
    };
    open(std::path::Path::new("/dev/shm")).or_else(|_| open(&std::env::temp_dir()))
}

impl FuseSession {
    /// Opens `share`'s directory behind the guard.
    pub fn open(share: &Share) -> Result<FuseSession, FsError> {
        let fs = Arc::new(share_fs(share)?);
        let replies = reply_file().map_err(|source| FsError::OpenDir {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(FuseSession {
            server: Server::new(fs.clone()),
            fs,
            replies: Mutex::new(replies),
            metrics: FsMetrics::default(),
            reach: share.reach(),
        })
    }

    /// The guarded file system behind the session.
    pub fn fs(&self) -> &ShareFs {
        &self.fs
    }

    /// Requests answered and refused so far.
    pub fn metrics(&self) -> &FsMetrics {
        &self.metrics
    }

    /// What a thread calling [`handle`](Self::handle) must reach: the
    /// share's directory (writable unless the share is read-only).
    pub fn reach(&self) -> &nook_seccomp::FsReach {
        &self.reach
    }

    /// Answers the FUSE request in `request` (one whole message as the
    /// driver sent it). The reply (empty for requests that have none, such
    /// as FORGET) replaces the contents of `reply`; it is never longer than
    /// `reply_capacity`. A request the server cannot parse or answer is an
    /// error, and counted.
    pub fn handle(
        &self,
        request: &mut [u8],
        reply_capacity: usize,
        reply: &mut Vec<u8>,
    ) -> io::Result<()> {
        reply.clear();
        let file = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.answer(&file, request, reply_capacity.min(MAX_MESSAGE_BYTES), reply);
        match &result {
            Ok(()) => self.metrics.requests.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn answer(
        &self,
        mut file: &File,
        request: &mut [u8],
        capacity: usize,
        reply: &mut Vec<u8>,
    ) -> io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; capacity];
        let reader: Reader<'_> =
            Reader::from_fuse_buffer(FuseBuf::new(request)).map_err(io::Error::other)?;
        let writer: FuseDevWriter<'_> =
            FuseDevWriter::new(file.as_raw_fd(), &mut buf).map_err(io::Error::other)?;
        self.server
            .handle_message(reader, writer.into(), None, None)
            .map_err(io::Error::other)?;
        let len = file.metadata()?.len();
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= capacity)
            .ok_or_else(|| io::Error::other("the reply does not fit the driver's buffers"))?;
        reply.resize(len, 0);
        file.read_exact_at(reply, 0)
    }
}

#[cfg(test)]
mod tests {
    use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, OutHeader};
    use vm_memory::ByteValued;

    use super::*;

    const LOOKUP: u32 = 1;
    const INIT: u32 = 26;

    fn message(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: 7,
            nodeid,
            ..Default::default()
        };
        let mut m = header.as_slice().to_vec();
        m.extend_from_slice(body);
        m
    }

    fn out_header(reply: &[u8]) -> OutHeader {
        let mut h = OutHeader::default();
        h.as_mut_slice()
            .copy_from_slice(&reply[..std::mem::size_of::<OutHeader>()]);
        h
    }

    fn session(dir: &std::path::Path) -> FuseSession {
        FuseSession::open(&Share {
            host_dir: dir.to_owned(),
            tag: "t".into(),
            read_only: true,
        })
        .unwrap()
    }

    #[test]
    fn answers_init_and_lookup_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), b"hi").unwrap();
        let s = session(dir.path());
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 1 << 20,
            flags: 0,
        };
        let mut reply = Vec::new();
        s.handle(&mut message(INIT, 0, init.as_slice()), 4096, &mut reply)
            .unwrap();
        let h = out_header(&reply);
        assert_eq!((h.error, h.unique, h.len as usize), (0, 7, reply.len()));
        s.handle(&mut message(LOOKUP, 1, b"hello\0"), 4096, &mut reply)
            .unwrap();
        assert_eq!(out_header(&reply).error, 0);
        s.handle(&mut message(LOOKUP, 1, b"..\0"), 4096, &mut reply)
            .unwrap();
        assert_ne!(out_header(&reply).error, 0, "`..` is refused");
        assert_eq!(s.metrics().requests.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn hostile_messages_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        let mut reply = Vec::new();
        // Shorter than a header, a header claiming 4 GiB, an unknown
        // opcode, a LOOKUP whose name has no NUL, and a reply that cannot
        // fit the driver's buffers.
        let mut huge = message(LOOKUP, 1, b"x\0");
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (vec![1, 2, 3], 4096),
            (huge, 4096),
            (message(9999, 1, &[]), 4096),
            (message(LOOKUP, 1, b"no-nul"), 4096),
            (message(INIT, 0, &[0u8; 64]), 8),
        ];
        for (mut m, cap) in cases {
            let r = s.handle(&mut m, cap, &mut reply);
            assert!(r.is_err() || out_header(&reply).error != 0, "{m:?}");
            assert!(reply.len() <= cap);
        }
        assert!(s.metrics().bad_requests.load(Ordering::Relaxed) >= 1);
    }
}
