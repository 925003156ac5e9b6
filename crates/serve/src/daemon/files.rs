//! File requests of the daemon protocol, served through [`SessionClient`]'s
//! streaming file operations: a write's chunks flow through a bounded
//! channel (a slow guest slows the client), a read's bytes leave as
//! `file_data` events of at most [`MAX_CHUNK`] bytes.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use super::conn::{Out, Owned};
use super::proto::{ErrorCode, ReplyBody, RequestBody, RequestId, DEFAULT_READ_CAP, MAX_CHUNK};
use super::server::Daemon;
use crate::wire::{decode_bytes, encode_bytes};
use crate::SessionClient;

/// Chunks in flight per upload before the client's reader waits.
const UPLOAD_QUEUE: usize = 4;

/// The bytes of an upload's chunks, until its sender is dropped.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Sends what it is given as `file_data` events.
struct EventWriter<'a> {
    out: &'a Out,
    id: &'a RequestId,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK);
        let sent = self.out.send(
            self.id,
            ReplyBody::FileData {
                data: encode_bytes(&buf[..n]),
            },
        );
        if sent {
            Ok(n)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client left",
            ))
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("nook-serve-file".into())
        .spawn(f)
    {
        tracing::warn!("nook serve: cannot start a file thread: {e}");
    }
}

/// Answers a file request.
pub(crate) fn serve(
    d: &Arc<Daemon>,
    out: &Out,
    owned: &Arc<Owned>,
    id: RequestId,
    body: RequestBody,
) {
    let open = |session: &str| SessionClient::open(&d.cfg.home, session);
    match body {
        RequestBody::FileWrite {
            session,
            path,
            mode,
            data,
            more,
        } => {
            let Ok(first) = decode_bytes(&data) else {
                return out.error(&id, ErrorCode::BadRequest, "`data` is not base64");
            };
            let c = match open(&session) {
                Ok(c) => c,
                Err(e) => return out.session_error(&id, &e),
            };
            let (tx, rx) = sync_channel(UPLOAD_QUEUE);
            let _ = tx.send(first);
            if more {
                owned
                    .uploads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), tx);
            } else {
                drop(tx);
            }
            let out = out.clone();
            spawn(move || {
                let mut src = ChunkReader {
                    rx,
                    pending: Vec::new(),
                    at: 0,
                };
                match c.write_from(&path, mode, &mut src) {
                    Ok(()) => {
                        out.send(&id, ReplyBody::Ok);
                    }
                    Err(e) => out.session_error(&id, &e),
                }
            });
        }
        RequestBody::FileWriteChunk { upload, data, more } => {
            let Ok(bytes) = decode_bytes(&data) else {
                return out.error(&id, ErrorCode::BadRequest, "`data` is not base64");
            };
            let mut uploads = owned.uploads.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tx) = (if more {
                uploads.get(&upload).cloned()
            } else {
                uploads.remove(&upload)
            }) else {
                return out.error(
                    &id,
                    ErrorCode::NoExec,
                    format!("no file upload {upload:?} in progress on this connection"),
                );
            };
            drop(uploads);
            // Waits while the guest is behind: back-pressure on the client.
            if tx.send(bytes).is_err() {
                return out.error(&id, ErrorCode::Io, "the upload already failed");
            }
            out.send(&id, ReplyBody::Ok);
        }
        RequestBody::FileRead {
            session,
            path,
            max_bytes,
        } => {
            let out = out.clone();
            let d = d.clone();
            spawn(move || {
                let result = SessionClient::open(&d.cfg.home, &session).and_then(|c| {
                    let mut w = EventWriter { out: &out, id: &id };
                    c.read_to(&path, &mut w, Some(max_bytes.unwrap_or(DEFAULT_READ_CAP)))
                });
                match result {
                    Ok(r) => {
                        out.send(
                            &id,
                            ReplyBody::ReadDone {
                                size: r.size,
                                copied: r.copied,
                                truncated: r.truncated,
                            },
                        );
                    }
                    Err(e) => out.session_error(&id, &e),
                }
            });
        }
        RequestBody::FileList { session, path } => {
            match open(&session).and_then(|c| c.list(&path)) {
                Ok((entries, truncated)) => {
                    out.send(&id, ReplyBody::List { entries, truncated });
                }
                Err(e) => out.session_error(&id, &e),
            }
        }
        RequestBody::FileStat { session, path } => match open(&session).and_then(|c| c.stat(&path))
        {
            Ok(stat) => {
                out.send(&id, ReplyBody::Stat { stat });
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::FileMkdir {
            session,
            path,
            mode,
        } => match open(&session).and_then(|c| c.mkdir_all(&path, mode)) {
            Ok(()) => {
                out.send(&id, ReplyBody::Ok);
            }
            Err(e) => out.session_error(&id, &e),
        },
        RequestBody::FileRemove {
            session,
            path,
            recursive,
        } => match open(&session).and_then(|c| c.remove(&path, recursive)) {
            Ok(()) => {
                out.send(&id, ReplyBody::Ok);
            }
            Err(e) => out.session_error(&id, &e),
        },
        other => out.error(
            &id,
            ErrorCode::BadRequest,
            format!("not a file request: {other:?}"),
        ),
    }
}
