//! A FUSE client for unit tests: crafted requests straight into a
//! [`FuseSession`] over a guarded share, replies read back. No VM, no
//! virtqueue.

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, MkdirIn, MknodIn, OpenIn, OpenOut, OutHeader, ReadIn,
    SetattrIn, WriteIn,
};
use vm_memory::ByteValued;

use crate::backend::ShareFs;
use crate::config::Share;
use crate::session::FuseSession;

pub(crate) const ROOT: u64 = 1;

// FUSE opcodes (linux/fuse.h).
const LOOKUP: u32 = 1;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const INIT: u32 = 26;
const CREATE: u32 = 35;

/// A FUSE reply: `Err(errno)` or the payload after the header.
pub(crate) type Reply = Result<Vec<u8>, i32>;

pub(crate) struct Client {
    session: FuseSession,
    unique: u64,
}

fn obj<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    v.as_mut_slice().copy_from_slice(&bytes[..n]);
    v
}

fn cstr(name: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.push(0);
    v
}

impl Client {
    pub fn new(dir: &std::path::Path, read_only: bool) -> Client {
        let share = Share {
            host_dir: dir.to_owned(),
            tag: "t".into(),
            read_only,
        };
        let mut c = Client {
            session: FuseSession::open(&share).unwrap(),
            unique: 0,
        };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 1 << 20,
            flags: 0,
        };
        c.call(INIT, 0, init.as_slice()).unwrap();
        c
    }

    /// Sends one request with body `body` for node `nodeid`.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut req = header.as_slice().to_vec();
        req.extend_from_slice(body);
        let mut reply = Vec::new();
        self.session.handle(&mut req, 1 << 20, &mut reply).unwrap();
        let n = reply.len();
        let header: OutHeader = obj(&reply[..n]);
        assert_eq!(header.unique, self.unique);
        if header.error != 0 {
            return Err(-header.error);
        }
        Ok(reply[std::mem::size_of::<OutHeader>()..n].to_vec())
    }

    /// The guarded file system behind the session.
    pub fn fs(&self) -> &ShareFs {
        self.session.fs()
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut, i32> {
        self.call(LOOKUP, parent, &cstr(name)).map(|b| obj(&b))
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let body = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(OPEN, node, body.as_slice())
            .map(|b| obj::<OpenOut>(&b).fh)
    }

    pub fn read(&mut self, node: u64, fh: u64, size: u32) -> Reply {
        let body = ReadIn {
            fh,
            offset: 0,
            size,
            ..ReadIn::default()
        };
        self.call(READ, node, body.as_slice())
    }

    pub fn write(&mut self, node: u64, fh: u64, data: &[u8]) -> Reply {
        let body = WriteIn {
            fh,
            offset: 0,
            size: data.len() as u32,
            ..WriteIn::default()
        };
        let mut req = body.as_slice().to_vec();
        req.extend_from_slice(data);
        self.call(WRITE, node, &req)
    }

    pub fn create(&mut self, parent: u64, name: &[u8], mode: u32) -> Result<(EntryOut, u64), i32> {
        let body = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let mut req = body.as_slice().to_vec();
        req.extend_from_slice(&cstr(name));
        let reply = self.call(CREATE, parent, &req)?;
        let entry: EntryOut = obj(&reply);
        let open: OpenOut = obj(&reply[std::mem::size_of::<EntryOut>()..]);
        Ok((entry, open.fh))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8]) -> Reply {
        let body = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        let mut req = body.as_slice().to_vec();
        req.extend_from_slice(&cstr(name));
        self.call(MKDIR, parent, &req)
    }

    pub fn mknod(&mut self, parent: u64, name: &[u8], mode: u32, rdev: u32) -> Reply {
        let body = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        let mut req = body.as_slice().to_vec();
        req.extend_from_slice(&cstr(name));
        self.call(MKNOD, parent, &req)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Reply {
        self.call(UNLINK, parent, &cstr(name))
    }

    pub fn readlink(&mut self, node: u64) -> Reply {
        self.call(READLINK, node, &[])
    }

    /// Truncates `node` to `size` (`FATTR_SIZE`).
    pub fn truncate(&mut self, node: u64, size: u64) -> Reply {
        let body = SetattrIn {
            valid: 1 << 3,
            size,
            ..SetattrIn::default()
        };
        self.call(SETATTR, node, body.as_slice())
    }

    /// chmod (`FATTR_MODE`).
    pub fn chmod(&mut self, node: u64, mode: u32) -> Reply {
        let body = SetattrIn {
            valid: 1,
            mode,
            ..SetattrIn::default()
        };
        self.call(SETATTR, node, body.as_slice())
    }
}

/// The `/proc` status of this process's thread called `name`, once it
/// shows `want` (waits up to 10 s), or the last status seen.
pub(crate) fn thread_status(name: &str, want: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                let status = std::fs::read_to_string(task.path().join("status")).ok();
                if status.as_deref().is_some_and(|s| s.contains(want)) {
                    return status;
                }
                last = status;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    last
}

/// The value of `field` (e.g. `CapEff:`) in a `/proc` status.
pub(crate) fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::trim)
        .unwrap_or("")
}
