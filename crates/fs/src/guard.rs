//! The rules a guest is held to, in front of the passthrough file system.
//!
//! `fuse-backend-rs`'s passthrough file system already keeps lookups to one
//! path component opened `O_PATH | O_NOFOLLOW` relative to the parent
//! directory's descriptor (a symlink is never followed on the host: it
//! becomes an inode whose `readlink` returns the link text, and the guest
//! kernel resolves it inside the guest), and it only reopens regular files
//! and directories. [`GuardedFs`] adds what it leaves open:
//!
//! - every name a request carries must be one plain component: not empty,
//!   not `.` or `..`, no `/` (the passthrough file system accepts `..` in
//!   lookups for NFS export, which nook never needs);
//! - a read-only share refuses every mutating request with `EROFS` and opens
//!   files read-only only;
//! - the guest cannot create device nodes on the host, and set-user-ID /
//!   set-group-ID bits are dropped from files it creates or chmods, so a
//!   guest cannot plant a privileged binary in a host directory.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

/// Counts of requests the guard refused.
#[derive(Debug, Default)]
pub struct GuardMetrics {
    /// Requests carrying a name that is not one plain path component.
    pub bad_names: AtomicU64,
    /// Mutating requests refused because the share is read-only.
    pub read_only_refusals: AtomicU64,
    /// Device nodes the guest tried to create.
    pub device_nodes_refused: AtomicU64,
}

/// A file system that enforces nook's share rules in front of another.
#[derive(Debug)]
pub struct GuardedFs<F> {
    inner: F,
    read_only: bool,
    metrics: GuardMetrics,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Whether `name` is one plain path component.
pub(crate) fn is_plain_name(name: &CStr) -> bool {
    let b = name.to_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/')
}

/// Open flags that need write access to the file.
fn wants_write(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
}

/// Drops set-user-ID always and set-group-ID except on directories (where
/// it only means "new entries inherit the group").
fn sanitize_mode(mode: u32) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_IFMT != libc::S_IFDIR {
        mode &= !libc::S_ISGID;
    }
    mode
}

impl<F> GuardedFs<F> {
    /// Guards `inner`; with `read_only`, nothing can be changed through it.
    pub fn new(inner: F, read_only: bool) -> Self {
        GuardedFs {
            inner,
            read_only,
            metrics: GuardMetrics::default(),
        }
    }

    /// The guarded file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// Whether the share is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// What has been refused so far.
    pub fn metrics(&self) -> &GuardMetrics {
        &self.metrics
    }

    fn check_name(&self, name: &CStr) -> io::Result<()> {
        if is_plain_name(name) {
            return Ok(());
        }
        let n = self.metrics.bad_names.fetch_add(1, Ordering::Relaxed);
        if n < 10 {
            tracing::debug!("nook-fs: refused a request naming {name:?}");
        }
        Err(errno(libc::EINVAL))
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            self.metrics
                .read_only_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(errno(libc::EROFS));
        }
        Ok(())
    }
}

impl<F: FileSystem> FileSystem for GuardedFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.check_name(name)?;
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        mut attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_writable()?;
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode = sanitize_mode(attr.st_mode);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_name(name)?;
        // The link text is data, resolved by the guest kernel inside the
        // guest; the host never follows it.
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_name(name)?;
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            self.metrics
                .device_nodes_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(errno(libc::EPERM));
        }
        self.inner
            .mknod(ctx, inode, name, sanitize_mode(mode), rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_name(name)?;
        self.inner
            .mkdir(ctx, parent, name, mode & !libc::S_ISUID, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.check_name(oldname)?;
        self.check_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        self.check_name(newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if wants_write(flags) {
            self.check_writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.check_writable()?;
        self.check_name(name)?;
        args.mode = sanitize_mode(args.mode);
        self.inner.create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        // Handles of a read-only share are read-only descriptors already;
        // refuse before touching them all the same.
        self.check_writable()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    // setupmapping / removemapping (DAX) are left at their ENOSYS default:
    // nook exposes no DAX window. ioctl is left at ENOSYS too: no host
    // inode flags (immutable, append-only) for the guest to set.

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if self.read_only && mask & libc::W_OK as u32 != 0 {
            return Err(errno(libc::EROFS));
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;
    use crate::testing::{Client, ROOT};

    /// A share directory with `file` ("hello"), `sub/inner`, and beside it
    /// (outside the share) `secret` and `secretdir/secret`, reachable from
    /// inside only through the symlinks `link`, `abslink`, `dirlink`.
    struct Fixture {
        _tmp: tempfile::TempDir,
        share: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::write(share.join("file"), b"hello").unwrap();
        std::fs::write(share.join("sub/inner"), b"inner").unwrap();
        std::fs::write(tmp.path().join("secret"), b"SECRET").unwrap();
        std::fs::create_dir(tmp.path().join("secretdir")).unwrap();
        std::fs::write(tmp.path().join("secretdir/secret"), b"SECRET").unwrap();
        symlink("../secret", share.join("link")).unwrap();
        symlink(tmp.path().join("secret"), share.join("abslink")).unwrap();
        symlink("../secretdir", share.join("dirlink")).unwrap();
        Fixture { _tmp: tmp, share }
    }

    #[test]
    fn plain_names_only() {
        for ok in [&b"a"[..], b"...", b".hidden", b"a b", b"\xff"] {
            assert!(is_plain_name(&std::ffi::CString::new(ok).unwrap()));
        }
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"../x", b"x/.."] {
            assert!(!is_plain_name(&std::ffi::CString::new(bad).unwrap()));
        }
    }

    #[test]
    fn lookups_of_dot_dot_slash_and_empty_names_fail() {
        let f = fixture();
        let mut c = Client::new(&f.share, false);
        let sub = c.lookup(ROOT, b"sub").unwrap().nodeid;
        for (parent, name) in [
            (ROOT, &b".."[..]),
            (sub, b".."),
            (ROOT, b"."),
            (ROOT, b""),
            (ROOT, b"sub/inner"),
            (ROOT, b"../secret"),
            (ROOT, b"/etc"),
            (sub, b"../file"),
        ] {
            assert_eq!(
                c.lookup(parent, name).map(|e| e.nodeid),
                Err(libc::EINVAL),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
        assert!(c.fs().metrics().bad_names.load(Ordering::Relaxed) >= 8);
        // Plain names still work, and the share's content is reachable.
        let inner = c.lookup(sub, b"inner").unwrap().nodeid;
        let fh = c.open(inner, libc::O_RDONLY).unwrap();
        assert_eq!(c.read(inner, fh, 100).unwrap(), b"inner");
    }

    #[test]
    fn symlinks_out_of_the_share_are_never_followed_on_the_host() {
        let f = fixture();
        let mut c = Client::new(&f.share, false);
        for (name, text) in [
            (&b"link"[..], b"../secret".to_vec()),
            (
                b"abslink",
                f.share
                    .parent()
                    .unwrap()
                    .join("secret")
                    .into_os_string()
                    .into_encoded_bytes(),
            ),
        ] {
            let entry = c.lookup(ROOT, name).unwrap();
            // The lookup found the link itself, not its target.
            assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK);
            assert_ne!(entry.attr.size, 6, "the size of the secret leaked");
            // readlink gives the text for the guest to resolve...
            assert_eq!(c.readlink(entry.nodeid).unwrap(), text);
            // ...and a crafted OPEN of the link inode does not reach the
            // file it points to.
            let opened = c.open(entry.nodeid, libc::O_RDONLY);
            assert!(opened.is_err(), "opened a symlink inode: {opened:?}");
        }
        // A symlink to a directory outside is no way through either.
        let dirlink = c.lookup(ROOT, b"dirlink").unwrap();
        assert_eq!(dirlink.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        let through = c.lookup(dirlink.nodeid, b"secret");
        assert!(through.is_err(), "looked up through a symlink: {through:?}");
    }

    #[test]
    fn read_only_share_refuses_every_mutation() {
        let f = fixture();
        let mut c = Client::new(&f.share, true);
        let file = c.lookup(ROOT, b"file").unwrap().nodeid;
        let sub = c.lookup(ROOT, b"sub").unwrap().nodeid;
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_APPEND,
        ] {
            assert_eq!(c.open(file, flags), Err(libc::EROFS), "flags {flags:#o}");
        }
        assert_eq!(c.create(ROOT, b"new", 0o644).map(|_| ()), Err(libc::EROFS));
        assert_eq!(c.mkdir(ROOT, b"newdir").map(|_| ()), Err(libc::EROFS));
        assert_eq!(
            c.mknod(ROOT, b"fifo", libc::S_IFIFO | 0o644, 0).map(|_| ()),
            Err(libc::EROFS)
        );
        assert_eq!(c.unlink(ROOT, b"file").map(|_| ()), Err(libc::EROFS));
        assert_eq!(c.unlink(sub, b"inner").map(|_| ()), Err(libc::EROFS));
        assert_eq!(c.truncate(file, 0).map(|_| ()), Err(libc::EROFS));
        assert_eq!(c.chmod(file, 0o777).map(|_| ()), Err(libc::EROFS));
        // Reading works, through a handle that is read-only on the host:
        // a crafted WRITE on it is refused too.
        let fh = c.open(file, libc::O_RDONLY).unwrap();
        assert_eq!(c.read(file, fh, 100).unwrap(), b"hello");
        assert_eq!(c.write(file, fh, b"XX").map(|_| ()), Err(libc::EROFS));

        assert_eq!(std::fs::read(f.share.join("file")).unwrap(), b"hello");
        assert_eq!(std::fs::read(f.share.join("sub/inner")).unwrap(), b"inner");
        assert!(!f.share.join("new").exists());
        assert!(!f.share.join("newdir").exists());
        assert!(!f.share.join("fifo").exists());
        assert!(c.fs().metrics().read_only_refusals.load(Ordering::Relaxed) >= 10);
    }

    #[test]
    fn read_write_share_writes_reach_the_host() {
        let f = fixture();
        let mut c = Client::new(&f.share, false);
        let (entry, fh) = c.create(ROOT, b"new", 0o644).unwrap();
        assert_eq!(c.write(entry.nodeid, fh, b"from guest").unwrap().len(), 8);
        assert_eq!(std::fs::read(f.share.join("new")).unwrap(), b"from guest");
        c.mkdir(ROOT, b"newdir").unwrap();
        assert!(f.share.join("newdir").is_dir());
        c.unlink(ROOT, b"file").unwrap();
        assert!(!f.share.join("file").exists());
        // Names with a slash are refused for creation as well.
        assert_eq!(
            c.create(ROOT, b"../escaped", 0o644).map(|_| ()),
            Err(libc::EINVAL)
        );
        assert!(!f.share.parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn no_device_nodes_and_no_setuid_files() {
        let f = fixture();
        let mut c = Client::new(&f.share, false);
        let null = libc::S_IFCHR | 0o666;
        let rdev = (1 << 8) | 3; // /dev/null's 1:3
        assert_eq!(
            c.mknod(ROOT, b"null", null, rdev).map(|_| ()),
            Err(libc::EPERM)
        );
        assert!(!f.share.join("null").exists());

        c.create(ROOT, b"suid", libc::S_IFREG | 0o4755).unwrap();
        let mode = std::fs::metadata(f.share.join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "mode {mode:o}");
        let node = c.lookup(ROOT, b"file").unwrap().nodeid;
        c.chmod(node, libc::S_IFREG | 0o6755).unwrap();
        let mode = std::fs::metadata(f.share.join("file"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "mode {mode:o}");
    }
}
