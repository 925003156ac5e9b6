//! Applies one layer tar to a root directory, never writing outside it.
//!
//! Every parent directory is opened component by component with
//! `O_NOFOLLOW | O_DIRECTORY` relative to the root's file descriptor, so a
//! symlink planted by an earlier member (`x -> /`) cannot redirect a later
//! write (`x/escape`): the walk stops at the symlink and the layer is
//! refused. Final components are created with `O_EXCL | O_NOFOLLOW` after
//! removing whatever was there, so a file member never writes through a
//! symlink either. Symlinks themselves are created verbatim (absolute
//! targets are fine: they are only followed inside the guest).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nook_fsutil::IoError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::error::{io_err, LayerError};
use super::fsops::{device, file_type_at, list_dir, open_dir_nofollow, remove_tree, timestamps};
use super::path::MemberPath;
use super::LayerStats;
use crate::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Applies one uncompressed layer tar onto `root` (which must exist):
/// whiteouts remove lower content, members are created with their modes,
/// owners (when running as root), times, xattrs, symlinks and hard links.
/// When `diff_id` is given, the stream must hash to it.
pub fn apply_layer<R: Read>(
    root: &Path,
    tar: R,
    diff_id: Option<&Digest>,
) -> Result<LayerStats, LayerError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::OpenRoot(root.to_owned(), e.into()))?;
    let mut unpacker = Unpacker {
        root: root_fd,
        chown: rustix::process::geteuid().is_root(),
        created: HashSet::new(),
        dir_times: Vec::new(),
        stats: LayerStats::default(),
    };
    let mut hashing = HashingReader::new(tar);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(LayerError::Tar)? {
            let mut entry = entry.map_err(LayerError::Tar)?;
            unpacker.stats.entries += 1;
            unpacker.apply_entry(&mut entry)?;
        }
    }
    unpacker.restore_dir_times();
    let (actual, _) = hashing.drain_and_finish().map_err(LayerError::Tar)?;
    if let Some(expected) = diff_id {
        if *expected != actual {
            return Err(LayerError::DiffId {
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(unpacker.stats)
}

pub(super) struct Unpacker {
    pub(super) root: OwnedFd,
    pub(super) chown: bool,
    /// Paths created by this layer (opaque markers keep them).
    pub(super) created: HashSet<MemberPath>,
    /// Directory mtimes, restored once the layer is done.
    pub(super) dir_times: Vec<(MemberPath, u64)>,
    pub(super) stats: LayerStats,
}

impl Unpacker {
    /// Opens the directory at `comps` below the root, refusing symlinks on
    /// the way. Missing directories are created (0755, root-owned) when
    /// `create`; otherwise `None` is returned.
    fn walk(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        member: &MemberPath,
    ) -> Result<Option<OwnedFd>, LayerError> {
        let mut cur = rustix::io::dup(&self.root).map_err(io_err("open the root for", member))?;
        let mut walked = MemberPath::parse(b"").map_err(LayerError::Path)?;
        for comp in comps {
            let name = OsStr::from_bytes(comp);
            walked = walked.join(comp);
            let next = match open_dir_nofollow(cur.as_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(cur.as_fd(), name, Mode::from_raw_mode(0o755))
                        .map_err(io_err("create directory", &walked))?;
                    self.created.insert(walked.clone());
                    open_dir_nofollow(cur.as_fd(), name)
                        .map_err(io_err("open directory", &walked))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => {
                    return Err(match file_type_at(cur.as_fd(), name) {
                        Ok(Some(FileType::Symlink)) => LayerError::ThroughSymlink {
                            path: member.to_string(),
                            via: walked.to_string(),
                        },
                        Ok(Some(FileType::Directory)) | Err(_) | Ok(None) => {
                            io_err("open directory", &walked)(e)
                        }
                        Ok(Some(_)) => LayerError::NotADirectory {
                            path: member.to_string(),
                            via: walked.to_string(),
                        },
                    })
                }
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    fn parent_of(&mut self, path: &MemberPath) -> Result<OwnedFd, LayerError> {
        match self.walk(path.parent_components(), true, path)? {
            Some(fd) => Ok(fd),
            None => Err(io_err("open the parent of", path)(Errno::NOENT)),
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let path = MemberPath::parse(&entry.path_bytes())?;
        let meta = self.read_meta(entry, &path)?;
        let Some(name) = path.file_name().map(OsStr::to_owned) else {
            // `./` itself: only a directory's metadata applies to the root.
            if kind == T::Directory {
                let root = rustix::io::dup(&self.root).map_err(io_err("open", &path))?;
                self.set_fd_meta(root.as_fd(), &meta, &path)?;
            }
            return Ok(());
        };
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&path, name.as_bytes());
        }
        let parent = self.parent_of(&path)?;
        let parent = parent.as_fd();
        match kind {
            T::Directory => {
                let kept = self.prepare_slot(parent, &name, true, &path)?;
                if !kept {
                    rustix::fs::mkdirat(parent, &name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("create directory", &path))?;
                }
                let fd =
                    open_dir_nofollow(parent, &name).map_err(io_err("open directory", &path))?;
                self.set_fd_meta(fd.as_fd(), &meta, &path)?;
                self.dir_times.push((path.clone(), meta.mtime));
                self.stats.dirs += 1;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.prepare_slot(parent, &name, false, &path)?;
                let fd = rustix::fs::openat(
                    parent,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err("create file", &path))?;
                let mut file = File::from(fd);
                let n = copy_member(entry, &mut file, &path)?;
                self.set_fd_meta(file.as_fd(), &meta, &path)?;
                rustix::fs::futimens(&file, &timestamps(meta.mtime))
                    .map_err(io_err("set times of", &path))?;
                self.stats.files += 1;
                self.stats.bytes += n;
            }
            T::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.prepare_slot(parent, &name, false, &path)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, &name)
                    .map_err(io_err("create symlink", &path))?;
                self.set_at_meta(parent, &name, &meta, false, &path)?;
                self.stats.symlinks += 1;
            }
            T::Link => {
                let raw = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(parent, &name, &path, &raw)?;
                self.stats.hardlinks += 1;
            }
            T::Char | T::Block | T::Fifo => {
                self.prepare_slot(parent, &name, false, &path)?;
                let (ft, dev) = match kind {
                    T::Char => (FileType::CharacterDevice, device(entry)),
                    T::Block => (FileType::BlockDevice, device(entry)),
                    _ => (FileType::Fifo, 0),
                };
                match rustix::fs::mknodat(parent, &name, ft, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => {
                        self.set_at_meta(parent, &name, &meta, true, &path)?;
                        self.stats.specials += 1;
                    }
                    Err(Errno::PERM) => {
                        tracing::warn!(member = %path, "image: skipping device node (not permitted)");
                    }
                    Err(e) => return Err(io_err("create device node", &path)(e)),
                }
            }
            other => {
                tracing::warn!(member = %path, kind = ?other, "image: skipping unsupported tar member type");
                return Ok(());
            }
        }
        self.created.insert(path);
        Ok(())
    }

    /// Makes room for a new member at `name`: an existing directory is kept
    /// when the new member is a directory (returns true); anything else is
    /// removed (directories recursively), never followed.
    fn prepare_slot(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        new_is_dir: bool,
        path: &MemberPath,
    ) -> Result<bool, LayerError> {
        match file_type_at(parent, name).map_err(io_err("inspect", path))? {
            None => Ok(false),
            Some(FileType::Directory) if new_is_dir => Ok(true),
            Some(_) => {
                remove_tree(parent, name).map_err(io_err("replace", path))?;
                Ok(false)
            }
        }
    }

    fn hard_link(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &MemberPath,
        raw_target: &[u8],
    ) -> Result<(), LayerError> {
        let target = MemberPath::parse(raw_target)?;
        let refuse = |reason| LayerError::LinkTarget {
            path: path.to_string(),
            target: target.to_string(),
            reason,
        };
        if target == *path {
            return Ok(());
        }
        let Some(tname) = target.file_name().map(OsStr::to_owned) else {
            return Err(refuse("is the root directory"));
        };
        let Some(tparent) = self.walk(target.parent_components(), false, &target)? else {
            return Err(refuse("does not exist in the image"));
        };
        match file_type_at(tparent.as_fd(), &tname).map_err(io_err("inspect", &target))? {
            None => return Err(refuse("does not exist in the image")),
            Some(FileType::Directory) => return Err(refuse("is a directory")),
            Some(_) => {}
        }
        self.prepare_slot(parent, name, false, path)?;
        rustix::fs::linkat(tparent.as_fd(), &tname, parent, name, AtFlags::empty())
            .map_err(io_err("create hard link", path))
    }

    fn whiteout(&mut self, path: &MemberPath, name: &[u8]) -> Result<(), LayerError> {
        self.stats.whiteouts += 1;
        let Some(dir_path) = path.parent() else {
            return Ok(());
        };
        let Some(dir) = self.walk(path.parent_components(), false, path)? else {
            return Ok(()); // nothing below to hide
        };
        if name == OPAQUE_MARKER {
            for child in list_dir(dir.as_fd()).map_err(io_err("list", &dir_path))? {
                if !self.created.contains(&dir_path.join(child.as_bytes())) {
                    remove_tree(dir.as_fd(), &child)
                        .map_err(io_err("remove (opaque directory)", path))?;
                }
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk and friends)
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(LayerError::BadWhiteout(path.to_string()));
        }
        remove_tree(dir.as_fd(), OsStr::from_bytes(target))
            .map_err(io_err("remove (whiteout)", path))
    }

    /// Directory mtimes change as members are added below them; set them
    /// last, deepest first.
    fn restore_dir_times(&mut self) {
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        for (path, mtime) in times {
            if let Ok(Some(fd)) = self.walk(path.raw_components(), false, &path) {
                let _ = rustix::fs::futimens(&fd, &timestamps(mtime));
            }
        }
    }
}

/// Copies a member's content into `file`: a failed read is the tar
/// stream's fault ([`LayerError::Tar`]), a failed write the host's (a full
/// disk: [`LayerError::Io`] naming the member).
fn copy_member(
    entry: &mut impl Read,
    file: &mut File,
    path: &MemberPath,
) -> Result<u64, LayerError> {
    let mut buf = vec![0u8; 32 << 10];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::Tar(e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| LayerError::Io(IoError::new("write", path.to_string(), e)))?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use super::*;
    use crate::testing::LayerBuilder;
    use std::os::unix::fs::MetadataExt;

    fn apply(root: &Path, tar: &[u8]) -> Result<LayerStats, LayerError> {
        apply_layer(root, tar, None)
    }

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        (dir, root)
    }

    #[test]
    fn writes_files_dirs_links_and_modes() {
        let (_t, root) = tmp();
        let tar = LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/marker", b"hello", 0o640)
            .file("bin/tool", b"#!/bin/sh", 0o4755)
            .symlink("bin/sh", "/usr/bin/dash")
            .hardlink("etc/marker-link", "etc/marker")
            .tar();
        let stats = apply(&root, &tar).unwrap();
        assert_eq!((stats.files, stats.symlinks, stats.hardlinks), (2, 1, 1));
        assert_eq!(std::fs::read(root.join("etc/marker")).unwrap(), b"hello");
        let m = std::fs::metadata(root.join("etc/marker")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.nlink(), 2);
        assert_eq!(m.mtime(), 1_700_000_000);
        let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/usr/bin/dash")
        );
        let link = std::fs::metadata(root.join("etc/marker-link")).unwrap();
        assert_eq!(link.ino(), m.ino());
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let (_t, root) = tmp();
        let lower = LayerBuilder::new()
            .file("a/gone", b"x", 0o644)
            .file("a/kept", b"x", 0o644)
            .file("opq/old1", b"x", 0o644)
            .file("opq/sub/old2", b"x", 0o644)
            .tar();
        apply(&root, &lower).unwrap();
        let upper = LayerBuilder::new()
            .whiteout("a", "gone")
            .dir("opq", 0o755)
            .file("opq/new-before-marker", b"n", 0o644)
            .opaque("opq")
            .file("opq/new", b"n", 0o644)
            .tar();
        let stats = apply(&root, &upper).unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert!(!root.join("a/gone").exists());
        assert!(root.join("a/kept").exists());
        assert!(!root.join("a/.wh.gone").exists());
        let mut names: Vec<_> = std::fs::read_dir(root.join("opq"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["new", "new-before-marker"]);
    }

    #[test]
    fn replaces_symlink_instead_of_writing_through_it() {
        let (t, root) = tmp();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"original").unwrap();
        let tar = LayerBuilder::new()
            .symlink("f", outside.to_str().unwrap())
            .file("f", b"replaced", 0o644)
            .tar();
        apply(&root, &tar).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"original");
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"replaced");
        assert!(!std::fs::symlink_metadata(root.join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn refuses_writes_through_symlinked_parents() {
        let (t, root) = tmp();
        let tar = LayerBuilder::new()
            .symlink("x", t.path().to_str().unwrap())
            .raw(tar::EntryType::Regular, b"x/escape", b"", b"pwned")
            .tar();
        let err = apply(&root, &tar).unwrap_err();
        assert!(matches!(err, LayerError::ThroughSymlink { .. }), "{err:?}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!t.path().join("escape").exists());
    }

    #[test]
    fn refuses_dotdot_absolute_and_escaping_hardlinks() {
        let (t, root) = tmp();
        let cases: Vec<Vec<u8>> = vec![
            LayerBuilder::new()
                .raw(tar::EntryType::Regular, b"../escape", b"", b"p")
                .tar(),
            LayerBuilder::new()
                .raw(tar::EntryType::Regular, b"a/../../escape", b"", b"p")
                .tar(),
            LayerBuilder::new()
                .raw(
                    tar::EntryType::Regular,
                    t.path().join("escape").to_str().unwrap().as_bytes(),
                    b"",
                    b"p",
                )
                .tar(),
            LayerBuilder::new()
                .raw(tar::EntryType::Link, b"lnk", b"../outside", b"")
                .tar(),
            LayerBuilder::new()
                .raw(tar::EntryType::Link, b"lnk", b"/etc/passwd", b"")
                .tar(),
        ];
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        for tar in cases {
            let err = apply(&root, &tar).unwrap_err();
            assert!(matches!(err, LayerError::Path(_)), "{err:?}");
        }
        assert!(!t.path().join("escape").exists());
        assert!(!root.join("lnk").exists());
    }

    #[test]
    fn refuses_hardlink_through_symlink_and_whiteout_through_symlink() {
        let (t, root) = tmp();
        std::fs::create_dir(t.path().join("victim")).unwrap();
        std::fs::write(t.path().join("victim/file"), b"keep").unwrap();
        let tar = LayerBuilder::new()
            .symlink("v", t.path().join("victim").to_str().unwrap())
            .raw(tar::EntryType::Link, b"stolen", b"v/file", b"")
            .tar();
        assert!(matches!(
            apply(&root, &tar).unwrap_err(),
            LayerError::ThroughSymlink { .. }
        ));
        let tar = LayerBuilder::new().whiteout("v", "file").tar();
        assert!(matches!(
            apply(&root, &tar).unwrap_err(),
            LayerError::ThroughSymlink { .. }
        ));
        let tar = LayerBuilder::new().opaque("v").tar();
        assert!(matches!(
            apply(&root, &tar).unwrap_err(),
            LayerError::ThroughSymlink { .. }
        ));
        assert_eq!(
            std::fs::read(t.path().join("victim/file")).unwrap(),
            b"keep"
        );
    }

    #[test]
    fn verifies_diff_id() {
        let (_t, root) = tmp();
        let tar = LayerBuilder::new().file("a", b"1", 0o644).tar();
        let good = Digest::of_bytes(&tar);
        apply_layer(&root, &tar[..], Some(&good)).unwrap();
        let bad = Digest::of_bytes(b"other");
        assert!(matches!(
            apply_layer(&root, &tar[..], Some(&bad)),
            Err(LayerError::DiffId { .. })
        ));
    }

    #[test]
    fn keeps_ownership_when_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping keeps_ownership_when_root: not running as root");
            return;
        }
        let (_t, root) = tmp();
        let tar = LayerBuilder::new()
            .file_owned("owned", b"x", 1234, 5678)
            .tar();
        apply(&root, &tar).unwrap();
        let m = std::fs::metadata(root.join("owned")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let (_t, root) = tmp();
        let tar = LayerBuilder::new().file("a", &[7u8; 5000], 0o644).tar();
        let err = apply(&root, &tar[..1024]).unwrap_err();
        assert!(matches!(err, LayerError::Tar(_)), "{err:?}");
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Dir(&'static str),
            File(&'static str),
            Symlink(&'static str, usize),
            HardLink(&'static str, &'static str),
        }

        const NAMES: &[&str] = &[
            "x",
            "x/y",
            "x/y/z",
            "a",
            "a/b",
            "./x/./y",
            "x/../y",
            "/abs",
            "../up",
            "x/.wh.y",
            "x/.wh..wh..opq",
            ".wh.a",
            ".",
        ];

        fn op() -> impl Strategy<Value = Op> {
            let name = proptest::sample::select(NAMES);
            prop_oneof![
                name.clone().prop_map(Op::Dir),
                name.clone().prop_map(Op::File),
                (name.clone(), 0usize..6).prop_map(|(n, t)| Op::Symlink(n, t)),
                (name.clone(), proptest::sample::select(NAMES))
                    .prop_map(|(n, t)| Op::HardLink(n, t)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever a layer holds, nothing appears outside the root and
            /// nothing panics.
            #[test]
            fn no_layer_writes_outside_the_root(layers in proptest::collection::vec(proptest::collection::vec(op(), 1..10), 1..3)) {
                let t = tempfile::tempdir().unwrap();
                let root = t.path().join("root");
                let outside = t.path().join("outside");
                std::fs::create_dir(&root).unwrap();
                std::fs::create_dir(&outside).unwrap();
                std::fs::write(outside.join("sentinel"), b"keep").unwrap();
                let outside_str = outside.to_str().unwrap().to_owned();
                let targets = [outside_str.as_str(), "..", "../..", "a", "x", "x/y"];
                for ops in &layers {
                    let mut b = LayerBuilder::new();
                    for op in ops {
                        match op {
                            Op::Dir(n) => b.raw(tar::EntryType::Directory, n.as_bytes(), b"", b""),
                            Op::File(n) => b.raw(tar::EntryType::Regular, n.as_bytes(), b"", b"data"),
                            Op::Symlink(n, i) => b.raw(tar::EntryType::Symlink, n.as_bytes(), targets[*i].as_bytes(), b""),
                            Op::HardLink(n, target) => b.raw(tar::EntryType::Link, n.as_bytes(), target.as_bytes(), b""),
                        };
                    }
                    let _ = apply(&root, &b.tar());
                }
                let mut beside: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
                beside.sort();
                prop_assert_eq!(beside, vec![OsString::from("outside"), OsString::from("root")]);
                let inside: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
                prop_assert_eq!(inside, vec![OsString::from("sentinel")]);
                prop_assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep".to_vec());
            }

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let t = tempfile::tempdir().unwrap();
                let _ = apply(t.path(), &bytes);
            }
        }
    }
}
