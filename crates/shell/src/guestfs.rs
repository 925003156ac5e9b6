//! The workspace in the guest (guest-primary mode): builtins operate on
//! the session's files through the guest file operations; paths are
//! resolved in the guest, so nothing here reaches a host file.

use std::io;

use nook::FileKind;
use nook_serve::wire::{ExecSpec, SessionErrorCode, SessionReply};
use nook_serve::{SessionClient, SessionError};

use crate::workspace::{Entry, EntryKind, WorkspaceFs, WsPath};

/// The guest side of the workspace.
#[derive(Debug)]
pub struct GuestFs {
    /// `None` until the session is up (or when it failed to start).
    pub(crate) client: Option<SessionClient>,
    root: String,
}

fn io_err(e: SessionError) -> io::Error {
    let kind = match &e {
        SessionError::Refused { code, .. } => match code {
            SessionErrorCode::NotFound => io::ErrorKind::NotFound,
            SessionErrorCode::IsADirectory => io::ErrorKind::IsADirectory,
            SessionErrorCode::NotADirectory => io::ErrorKind::NotADirectory,
            SessionErrorCode::PermissionDenied => io::ErrorKind::PermissionDenied,
            SessionErrorCode::NotEmpty => io::ErrorKind::DirectoryNotEmpty,
            _ => io::ErrorKind::Other,
        },
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, nook::error_chain(&e))
}

fn kind_of(k: FileKind) -> EntryKind {
    match k {
        FileKind::File => EntryKind::File,
        FileKind::Dir => EntryKind::Dir,
        FileKind::Symlink => EntryKind::Symlink,
        FileKind::Other => EntryKind::Other,
    }
}

impl GuestFs {
    pub fn new(root: String) -> GuestFs {
        GuestFs { client: None, root }
    }

    fn client(&self) -> io::Result<&SessionClient> {
        self.client
            .as_ref()
            .ok_or_else(|| io::Error::other("the session is not running"))
    }

    fn path(&self, p: &WsPath) -> String {
        p.in_guest(&self.root)
    }

    /// Runs a small tool (`mv`, `touch`) in the guest; fails with its stderr.
    fn tool(&self, argv: &[&str]) -> io::Result<()> {
        let spec = ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ExecSpec::default()
        };
        let mut run = self.client()?.exec(spec).map_err(io_err)?;
        let mut err = Vec::new();
        loop {
            match run.next_reply().map_err(io_err)? {
                Some(SessionReply::Stderr { data }) => {
                    err.extend(nook_serve::wire::decode_bytes(&data).unwrap_or_default())
                }
                Some(SessionReply::Exit { code: Some(0), .. }) => return Ok(()),
                Some(SessionReply::Exit { .. }) => {
                    return Err(io::Error::other(
                        String::from_utf8_lossy(&err).trim().to_string(),
                    ))
                }
                Some(SessionReply::Error { message, .. }) => return Err(io::Error::other(message)),
                Some(_) => {}
                None => return Err(io::Error::other("the session closed the command")),
            }
        }
    }
}

impl WorkspaceFs for GuestFs {
    fn read(&mut self, p: &WsPath) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.client()?
            .read_to(&self.path(p), &mut out, None)
            .map_err(io_err)?;
        Ok(out)
    }

    fn write(&mut self, p: &WsPath, data: &[u8], append: bool) -> io::Result<()> {
        let mut all = if append {
            match self.read(p) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        all.extend_from_slice(data);
        self.client()?
            .write_from(&self.path(p), 0o644, &mut all.as_slice())
            .map_err(io_err)
    }

    fn kind(&mut self, p: &WsPath) -> io::Result<Option<EntryKind>> {
        match self.client()?.stat(&self.path(p)) {
            Ok(st) => Ok(Some(kind_of(st.kind))),
            Err(e) => {
                let e = io_err(e);
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn list(&mut self, p: &WsPath) -> io::Result<Vec<Entry>> {
        let (entries, _) = self.client()?.list(&self.path(p)).map_err(io_err)?;
        let mut out: Vec<Entry> = entries
            .into_iter()
            .map(|e| Entry {
                name: e.name,
                kind: kind_of(e.kind),
                size: e.size,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn mkdir(&mut self, p: &WsPath, parents: bool) -> io::Result<()> {
        if !parents {
            if let Some(parent) = p.parent() {
                if self.kind(&parent)? != Some(EntryKind::Dir) {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
                }
            }
            if self.kind(p)?.is_some() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
        }
        self.client()?
            .mkdir_all(&self.path(p), 0o755)
            .map_err(io_err)
    }

    fn remove(&mut self, p: &WsPath, recursive: bool) -> io::Result<()> {
        self.client()?
            .remove(&self.path(p), recursive)
            .map_err(io_err)
    }

    fn rename(&mut self, from: &WsPath, to: &WsPath) -> io::Result<()> {
        let (a, b) = (self.path(from), self.path(to));
        self.tool(&["mv", "-f", "--", &a, &b])
    }

    fn touch(&mut self, p: &WsPath) -> io::Result<()> {
        let path = self.path(p);
        self.tool(&["touch", "--", &path])
    }
}
