//! File operations the host asks for: atomic writes, windowed reads,
//! stat, list, mkdir -p, remove -r, symlink. They run on the request loop's
//! thread, so a large write is paced by the channel itself.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nook_proto::{
    ErrorCode, ErrorReply, FileKind, FileReply, FileRequest, FileStat, GuestMsg, MAX_LIST,
    MAX_READ, STDIO_CHUNK,
};

use crate::channel::Sender;

/// A write waiting for its chunks.
#[derive(Debug)]
struct PendingWrite {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    mode: u32,
}

/// Writes in progress, by stream.
#[derive(Debug, Default)]
pub struct Files {
    writes: HashMap<u32, PendingWrite>,
}

fn reply_error(e: &io::Error, what: &str) -> ErrorReply {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        io::ErrorKind::NotADirectory => ErrorCode::NotADirectory,
        io::ErrorKind::IsADirectory => ErrorCode::IsADirectory,
        io::ErrorKind::DirectoryNotEmpty => ErrorCode::NotEmpty,
        io::ErrorKind::InvalidInput => ErrorCode::BadRequest,
        _ => ErrorCode::Io,
    };
    ErrorReply {
        code,
        message: format!("{what}: {e}"),
    }
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A request's path: absolute, no NUL bytes.
fn guest_path(path: &str) -> io::Result<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad(format!("`{path}` is not an absolute path")));
    }
    Ok(PathBuf::from(path))
}

fn stat_of(name: String, path: &Path) -> io::Result<FileStat> {
    let m = std::fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let link_target = ft
        .is_symlink()
        .then(|| std::fs::read_link(path).map(|t| t.to_string_lossy().into_owned()))
        .transpose()?;
    Ok(FileStat {
        name,
        kind,
        size: m.len(),
        mode: m.mode() & 0o7777,
        mtime: m.mtime(),
        link_target,
    })
}

impl Files {
    /// Handles a `File` request on `stream`.
    pub fn request(&mut self, stream: u32, req: FileRequest, out: &Sender) {
        let result = match req {
            FileRequest::Write { path, mode } => {
                self.begin_write(stream, &path, mode).map(|_| None)
            }
            FileRequest::Read { path, offset, len } => {
                read(stream, &path, offset, len, out).map(Some)
            }
            other => simple(other).map(Some),
        };
        let msg = match result {
            Ok(None) => return,
            Ok(Some(reply)) => GuestMsg::FileDone(reply),
            Err(reply) => GuestMsg::Error(reply),
        };
        let _ = out.send(stream, &msg);
    }

    fn begin_write(&mut self, stream: u32, path: &str, mode: u32) -> Result<(), ErrorReply> {
        let dest = guest_path(path).map_err(|e| reply_error(&e, path))?;
        if self.writes.contains_key(&stream) {
            return Err(reply_error(
                &bad(format!("stream {stream} is in use")),
                path,
            ));
        }
        if dest.is_dir() {
            return Err(reply_error(
                &io::Error::from(io::ErrorKind::IsADirectory),
                path,
            ));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| reply_error(&bad("no file name".into()), path))?;
        let tmp = dest.with_file_name(format!(".{}.nook-tmp-{stream}", name.to_string_lossy()));
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| reply_error(&e, path))?;
        self.writes.insert(
            stream,
            PendingWrite {
                tmp,
                dest,
                file,
                mode: mode & 0o7777,
            },
        );
        Ok(())
    }

    /// Handles a `FileChunk` on `stream`: appends it, or finishes the write
    /// when it is empty.
    pub fn chunk(&mut self, stream: u32, data: &[u8], out: &Sender) {
        let Some(w) = self.writes.get_mut(&stream) else {
            // A write that already failed: its error was sent.
            return;
        };
        let result = if data.is_empty() {
            let w = self.writes.remove(&stream).map(finish);
            match w {
                Some(Ok(())) => Ok(true),
                Some(Err(e)) => Err(e),
                None => Ok(false),
            }
        } else {
            w.file.write_all(data).map(|_| false)
        };
        match result {
            Ok(false) => {}
            Ok(true) => {
                let _ = out.send(stream, &GuestMsg::FileDone(FileReply::Ok));
            }
            Err(e) => {
                if let Some(w) = self.writes.remove(&stream) {
                    let _ = std::fs::remove_file(&w.tmp);
                }
                let _ = out.send(stream, &GuestMsg::Error(reply_error(&e, "write")));
            }
        }
    }

    /// Forgets writes whose stream the host abandoned (it closed the channel).
    pub fn clear(&mut self) {
        for (_, w) in self.writes.drain() {
            let _ = std::fs::remove_file(&w.tmp);
        }
    }
}

/// Gives the temporary file its mode and renames it over the target.
fn finish(w: PendingWrite) -> io::Result<()> {
    let done = w
        .file
        .set_permissions(std::fs::Permissions::from_mode(w.mode))
        .and_then(|_| std::fs::rename(&w.tmp, &w.dest));
    if done.is_err() {
        let _ = std::fs::remove_file(&w.tmp);
    }
    done
}

fn read(
    stream: u32,
    path: &str,
    offset: u64,
    len: u32,
    out: &Sender,
) -> Result<FileReply, ErrorReply> {
    let err = |e: io::Error| reply_error(&e, path);
    let p = guest_path(path).map_err(err)?;
    let mut f = File::open(&p).map_err(err)?;
    let m = f.metadata().map_err(err)?;
    if m.is_dir() {
        return Err(err(io::Error::from(io::ErrorKind::IsADirectory)));
    }
    f.seek(SeekFrom::Start(offset)).map_err(err)?;
    let want = len.min(MAX_READ) as usize;
    let mut buf = vec![0u8; want.min(STDIO_CHUNK)];
    let mut sent = 0usize;
    while sent < want {
        let n = (want - sent).min(buf.len());
        let got = match f.read(&mut buf[..n]) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        out.send(stream, &GuestMsg::FileContent(buf[..got].to_vec()))
            .map_err(err)?;
        sent += got;
    }
    Ok(FileReply::Read {
        size: m.len(),
        sent: sent as u64,
    })
}

/// Requests answered with one reply.
fn simple(req: FileRequest) -> Result<FileReply, ErrorReply> {
    match req {
        FileRequest::Stat { path } => {
            let p = guest_path(&path).map_err(|e| reply_error(&e, &path))?;
            stat_of(String::new(), &p)
                .map(FileReply::Stat)
                .map_err(|e| reply_error(&e, &path))
        }
        FileRequest::List { path } => list(&path).map_err(|e| reply_error(&e, &path)),
        FileRequest::Mkdir { path, mode } => {
            let p = guest_path(&path).map_err(|e| reply_error(&e, &path))?;
            std::fs::create_dir_all(&p)
                .and_then(|_| {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                })
                .map(|_| FileReply::Ok)
                .map_err(|e| reply_error(&e, &path))
        }
        FileRequest::Remove { path, recursive } => remove(&path, recursive)
            .map(|_| FileReply::Ok)
            .map_err(|e| reply_error(&e, &path)),
        FileRequest::Symlink { target, path } => {
            let p = guest_path(&path).map_err(|e| reply_error(&e, &path))?;
            std::os::unix::fs::symlink(&target, &p)
                .map(|_| FileReply::Ok)
                .map_err(|e| reply_error(&e, &path))
        }
        FileRequest::Write { path, .. } | FileRequest::Read { path, .. } => {
            Err(reply_error(&bad("not a one-reply request".into()), &path))
        }
    }
}

fn list(path: &str) -> io::Result<FileReply> {
    let p = guest_path(path)?;
    let mut names: Vec<_> = std::fs::read_dir(&p)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let truncated = names.len() > MAX_LIST;
    names.truncate(MAX_LIST);
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        // An entry removed meanwhile is simply not listed.
        if let Ok(st) = stat_of(name.to_string_lossy().into_owned(), &p.join(&name)) {
            entries.push(st);
        }
    }
    Ok(FileReply::List { entries, truncated })
}

fn remove(path: &str, recursive: bool) -> io::Result<()> {
    let p = guest_path(path)?;
    let m = std::fs::symlink_metadata(&p)?;
    if !m.is_dir() {
        return std::fs::remove_file(&p);
    }
    if recursive {
        std::fs::remove_dir_all(&p)
    } else {
        std::fs::remove_dir(&p)
    }
}
