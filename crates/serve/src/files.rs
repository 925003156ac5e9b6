//! Guest file requests on the session socket, served through
//! [`nook::GuestFiles`]: bytes stream between the client's lines and the
//! guest chunk by chunk, each side paced by the other.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use nook::{FileError, FileErrorKind, GuestFiles};

use crate::host::{read_line, send, Host};
use crate::wire::{
    decode_bytes, encode_bytes, FileInput, SessionErrorCode, SessionReply, SessionRequest,
};

/// The error line for a failed file operation.
pub(crate) fn file_error_reply(e: &FileError) -> SessionReply {
    let code = match e {
        FileError::Guest { kind, .. } => match kind {
            FileErrorKind::NotFound => SessionErrorCode::NotFound,
            FileErrorKind::NotADirectory => SessionErrorCode::NotADirectory,
            FileErrorKind::IsADirectory => SessionErrorCode::IsADirectory,
            FileErrorKind::PermissionDenied => SessionErrorCode::PermissionDenied,
            FileErrorKind::NotEmpty => SessionErrorCode::NotEmpty,
            FileErrorKind::BadRequest => SessionErrorCode::BadRequest,
            FileErrorKind::Io => SessionErrorCode::Io,
        },
        FileError::Source { .. } => SessionErrorCode::BadRequest,
        FileError::Sink { .. } | FileError::Vm(_) => SessionErrorCode::Vm,
    };
    SessionReply::Error {
        code,
        message: nook::error_chain(e),
    }
}

/// The bytes of a client's `chunk` lines, up to its `end` line.
struct ChunkLines<'a> {
    r: &'a mut BufReader<UnixStream>,
    pending: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for ChunkLines<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.pending.len() {
            if self.ended {
                return Ok(0);
            }
            let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
            let line = read_line(self.r)?
                .ok_or_else(|| invalid("the client left before the end of the file".into()))?;
            match serde_json::from_slice::<FileInput>(&line) {
                Ok(FileInput::Chunk { data }) => {
                    self.pending = decode_bytes(&data).map_err(|e| invalid(e.to_string()))?;
                    self.at = 0;
                }
                Ok(FileInput::End) => self.ended = true,
                Err(e) => return Err(invalid(e.to_string())),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes file bytes to the client as `data` lines.
struct DataLines<'a>(&'a mut UnixStream);

impl Write for DataLines<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(
            self.0,
            &SessionReply::Data {
                data: encode_bytes(buf),
            },
        )?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves one file request; `req` is one of the `File*` requests.
pub(crate) fn serve_file(
    host: &Host,
    req: SessionRequest,
    r: &mut BufReader<UnixStream>,
    w: &mut UnixStream,
) -> io::Result<()> {
    let files: Option<GuestFiles> = host
        .vm
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|vm| vm.files());
    let Some(files) = files else {
        return send(
            w,
            &SessionReply::Error {
                code: SessionErrorCode::Vm,
                message: "the session is stopping".into(),
            },
        );
    };
    let result = match req {
        SessionRequest::FileWrite { path, mode } => {
            let mut src = ChunkLines {
                r,
                pending: Vec::new(),
                at: 0,
                ended: false,
            };
            files
                .write_from(&path, mode, &mut src)
                .map(|_| SessionReply::Ok)
        }
        SessionRequest::FileRead { path, max_bytes } => files
            .read_to(&path, &mut DataLines(w), max_bytes)
            .map(|s| SessionReply::ReadDone {
                size: s.size,
                copied: s.copied,
                truncated: s.truncated,
            }),
        SessionRequest::FileStat { path } => files.stat(&path).map(SessionReply::Stat),
        SessionRequest::FileList { path } => files
            .list(&path)
            .map(|(entries, truncated)| SessionReply::List { entries, truncated }),
        SessionRequest::FileMkdir { path, mode } => {
            files.mkdir_all(&path, mode).map(|_| SessionReply::Ok)
        }
        SessionRequest::FileRemove { path, recursive } => {
            files.remove(&path, recursive).map(|_| SessionReply::Ok)
        }
        SessionRequest::FileSymlink { target, path } => {
            files.symlink(&target, &path).map(|_| SessionReply::Ok)
        }
        other => {
            return send(
                w,
                &SessionReply::Error {
                    code: SessionErrorCode::BadRequest,
                    message: format!("not a file request: {other:?}"),
                },
            )
        }
    };
    let reply = result.unwrap_or_else(|e| file_error_reply(&e));
    send(w, &reply)
}
