//! Files in the guest: [`GuestFiles`], from [`crate::Vm::files`].
//!
//! Every operation streams: a write sends its source in chunks (the
//! channel paces it), a read fetches the file window by window
//! ([`nook_proto::MAX_READ`] bytes each) into a writer, so a file of any size
//! never sits in memory whole. Writes are atomic in the guest (temporary
//! file + rename).

use std::io::{self, Read, Write};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use nook_proto::{ErrorCode, FileReply, FileRequest, HostMsg, Kind, MAX_READ, STDIO_CHUNK};
pub use nook_proto::{FileKind, FileStat};

use crate::conn::{Conn, Event};
use crate::error::{ChannelLoss, ProtocolViolation, VmError};

/// Why a guest file operation failed, as a stable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileErrorKind {
    NotFound,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    NotEmpty,
    /// The request was invalid (a relative path, ...).
    BadRequest,
    Io,
}

/// What can go wrong with a guest file operation.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("guest file {path}: {message}")]
    Guest {
        path: String,
        kind: FileErrorKind,
        message: String,
    },
    #[error("cannot read the data for guest file {path}")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the contents of guest file {path}")]
    Sink {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How a read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    /// The file's size in the guest.
    pub size: u64,
    /// Bytes copied to the writer.
    pub copied: u64,
    /// The cap stopped the copy before the end of the file.
    pub truncated: bool,
}

/// File operations on a VM's guest; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    pub(crate) conn: Arc<Conn>,
}

/// One operation's stream, closed when dropped.
struct Op<'a> {
    conn: &'a Conn,
    id: u32,
    rx: Receiver<Event>,
    path: &'a str,
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.conn.close_stream(self.id);
    }
}

impl<'a> Op<'a> {
    fn open(conn: &'a Conn, path: &'a str) -> Result<Op<'a>, FileError> {
        let (id, rx, _flow) = conn.open_stream()?;
        Ok(Op { conn, id, rx, path })
    }

    fn send(&self, req: FileRequest) -> Result<(), FileError> {
        Ok(self.conn.send(self.id, &HostMsg::File(req))?)
    }

    /// The reply, passing content to `content`.
    fn reply(
        &self,
        mut content: impl FnMut(Vec<u8>) -> Result<(), FileError>,
    ) -> Result<FileReply, FileError> {
        loop {
            let event = self
                .rx
                .recv()
                .map_err(|_| VmError::ChannelLost(ChannelLoss::VmGone))?;
            match event {
                Event::FileContent(b) => content(b)?,
                Event::FileDone(r) => return Ok(r),
                Event::Error(e) => return Err(self.guest_error(e.code, e.message)),
                Event::Lost(why) => return Err(VmError::ChannelLost(why).into()),
                _ => {
                    return Err(VmError::Protocol(ProtocolViolation::Unexpected {
                        expected: "a file reply",
                        got: Kind::Stdout,
                    })
                    .into())
                }
            }
        }
    }

    fn guest_error(&self, code: ErrorCode, message: String) -> FileError {
        let kind = match code {
            ErrorCode::NotFound => FileErrorKind::NotFound,
            ErrorCode::NotADirectory => FileErrorKind::NotADirectory,
            ErrorCode::IsADirectory => FileErrorKind::IsADirectory,
            ErrorCode::PermissionDenied => FileErrorKind::PermissionDenied,
            ErrorCode::NotEmpty => FileErrorKind::NotEmpty,
            ErrorCode::BadRequest => FileErrorKind::BadRequest,
            _ => FileErrorKind::Io,
        };
        FileError::Guest {
            path: self.path.to_string(),
            kind,
            message,
        }
    }

    fn simple(&self, req: FileRequest) -> Result<FileReply, FileError> {
        self.send(req)?;
        self.reply(|_| Ok(()))
    }
}

fn unexpected(_: FileReply) -> FileError {
    FileError::Vm(VmError::Protocol(ProtocolViolation::Unexpected {
        expected: "another file reply",
        got: Kind::FileDone,
    }))
}

impl GuestFiles {
    /// Replaces guest file `path` (absolute) with everything `src` yields,
    /// with permission bits `mode`; returns the bytes written. The file
    /// appears whole or not at all.
    pub fn write_from(&self, path: &str, mode: u32, src: &mut dyn Read) -> Result<u64, FileError> {
        let op = Op::open(&self.conn, path)?;
        op.send(FileRequest::Write {
            path: path.to_string(),
            mode,
        })?;
        let mut buf = vec![0u8; STDIO_CHUNK];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // Abandon the write: the guest removes its temporary
                    // file when the stream's chunks stop for good.
                    return Err(FileError::Source {
                        path: path.to_string(),
                        source,
                    });
                }
            };
            if n == 0 {
                break;
            }
            self.conn
                .send_raw(op.id, Kind::FileChunk as u8, &buf[..n])?;
            total += n as u64;
            // A write the guest already refused: stop sending.
            if let Ok(Event::Error(e)) = op.rx.try_recv() {
                return Err(op.guest_error(e.code, e.message));
            }
        }
        self.conn.send_raw(op.id, Kind::FileChunk as u8, &[])?;
        match op.reply(|_| Ok(()))? {
            FileReply::Ok => Ok(total),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces guest file `path` with `bytes`.
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), FileError> {
        self.write_from(path, mode, &mut &bytes[..]).map(|_| ())
    }

    /// Copies guest file `path` into `dst`, at most `max` bytes when given
    /// (then [`ReadSummary::truncated`] says whether the cap cut it).
    pub fn read_to(
        &self,
        path: &str,
        dst: &mut dyn Write,
        max: Option<u64>,
    ) -> Result<ReadSummary, FileError> {
        let op = Op::open(&self.conn, path)?;
        let mut copied = 0u64;
        loop {
            let left = max.map_or(u64::MAX, |m| m.saturating_sub(copied));
            let len = left.min(MAX_READ as u64) as u32;
            op.send(FileRequest::Read {
                path: path.to_string(),
                offset: copied,
                len: len.max(1),
            })?;
            let mut got = 0u64;
            let reply = op.reply(|b| {
                // A window asked for `len` bytes; a peer sending more is cut.
                let room = (len as u64).saturating_sub(got) as usize;
                let b = &b[..b.len().min(room)];
                got += b.len() as u64;
                dst.write_all(b).map_err(|source| FileError::Sink {
                    path: path.to_string(),
                    source,
                })
            })?;
            let FileReply::Read { size, .. } = reply else {
                return Err(unexpected(reply));
            };
            copied += got;
            if len == 0 || got < len as u64 || copied >= size {
                return Ok(ReadSummary {
                    size,
                    copied,
                    truncated: copied < size,
                });
            }
        }
    }

    /// Guest file `path`, at most `max` bytes of it.
    pub fn read(&self, path: &str, max: u64) -> Result<(Vec<u8>, ReadSummary), FileError> {
        let mut out = Vec::new();
        let summary = self.read_to(path, &mut out, Some(max))?;
        Ok((out, summary))
    }

    /// What `path` is (a final symlink is not followed).
    pub fn stat(&self, path: &str) -> Result<FileStat, FileError> {
        match Op::open(&self.conn, path)?.simple(FileRequest::Stat {
            path: path.to_string(),
        })? {
            FileReply::Stat(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The entries of directory `path`, sorted by name, and whether there
    /// were more than [`nook_proto::MAX_LIST`].
    pub fn list(&self, path: &str) -> Result<(Vec<FileStat>, bool), FileError> {
        match Op::open(&self.conn, path)?.simple(FileRequest::List {
            path: path.to_string(),
        })? {
            FileReply::List { entries, truncated } => Ok((entries, truncated)),
            other => Err(unexpected(other)),
        }
    }

    /// `mkdir -p path`; the last directory gets permission bits `mode`.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<(), FileError> {
        self.expect_ok(
            path,
            FileRequest::Mkdir {
                path: path.to_string(),
                mode,
            },
        )
    }

    /// Removes `path`; a non-empty directory only with `recursive`.
    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), FileError> {
        self.expect_ok(
            path,
            FileRequest::Remove {
                path: path.to_string(),
                recursive,
            },
        )
    }

    /// Creates symlink `path` pointing to `target`.
    pub fn symlink(&self, target: &str, path: &str) -> Result<(), FileError> {
        self.expect_ok(
            path,
            FileRequest::Symlink {
                target: target.to_string(),
                path: path.to_string(),
            },
        )
    }

    fn expect_ok(&self, path: &str, req: FileRequest) -> Result<(), FileError> {
        match Op::open(&self.conn, path)?.simple(req)? {
            FileReply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
