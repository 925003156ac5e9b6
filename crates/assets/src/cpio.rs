//! A writer for the cpio "newc" format (the `070701` "SVR4 no CRC" variant),
//! the format the Linux kernel unpacks an initramfs from.
//!
//! Layout of one entry (all numbers are 8 ASCII hex digits; written in upper
//! case, as the kernel's own `usr/gen_init_cpio` does):
//!
//! ```text
//! +--------+-----+------+-----+-----+-------+-------+----------+-------+-------+--------+--------+----------+-------+
//! | 070701 | ino | mode | uid | gid | nlink | mtime | filesize | major | minor | rmajor | rminor | namesize | check |
//! +--------+-----+------+-----+-----+-------+-------+----------+-------+-------+--------+--------+----------+-------+
//!   6 bytes  then 13 fields of 8 hex digits = 110 bytes of header
//! name bytes, NUL; zero-padded so that header + name is a multiple of 4
//! file data (or a symlink's target); zero-padded to a multiple of 4
//! ```
//!
//! The archive ends with an entry named `TRAILER!!!`. The writer emits
//! entries exactly in the order it is given them, so callers create parent
//! directories before their children (the kernel does not `mkdir -p`).
//! Every entry gets its own inode number and `nlink` 1 (2 for directories)
//! so the kernel never mistakes two files for hard links of each other.

use std::io::{self, Write};

/// The magic of the newc format.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// The name of the last entry of every archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header: the magic plus 13 eight-digit fields.
pub const HEADER_LEN: usize = 110;

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link type bits.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device type bits.
pub const S_IFCHR: u32 = 0o020_000;

/// Errors of the cpio writer.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The entry name cannot be stored.
    #[error(
        "cpio entry name {name:?} is invalid: names are relative, non-empty and contain no NUL"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// A field does not fit in the format's 32 bits.
    #[error(
        "cpio entry {name} is too large for the newc format ({size} bytes, at most 4 GiB - 1)"
    )]
    TooLarge {
        /// The entry's name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Writing to the underlying stream failed.
    #[error("cannot write cpio entry {name}")]
    Write {
        /// The entry being written.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Metadata of one archive entry; the writer fills in the inode number,
/// sizes and link count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Full `st_mode`: type bits | permission bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Device major number for device nodes, else 0.
    pub rdev_major: u32,
    /// Device minor number for device nodes, else 0.
    pub rdev_minor: u32,
}

impl EntryMeta {
    /// Root-owned entry with the given mode and mtime 0 (reproducible archives).
    pub fn root(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
        }
    }
}

/// Streams newc entries into `W`. Call [`CpioWriter::finish`] to write the
/// trailer; an archive without it is incomplete.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer that numbers inodes from 1.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A directory. Permission bits come from `perm` (e.g. `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, EntryMeta::root(S_IFDIR | (perm & 0o7777)), 2, b"")
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, EntryMeta::root(S_IFREG | (perm & 0o7777)), 1, data)
    }

    /// A symbolic link `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, EntryMeta::root(S_IFLNK | 0o777), 1, target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let meta = EntryMeta {
            rdev_major: major,
            rdev_minor: minor,
            ..EntryMeta::root(S_IFCHR | (perm & 0o7777))
        };
        self.entry(name, meta, 1, b"")
    }

    /// Any entry: `data` is the file contents or the symlink target.
    pub fn entry(
        &mut self,
        name: &str,
        meta: EntryMeta,
        nlink: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        check_name(name)?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.raw_entry(name, ino, meta, nlink, data)
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.raw_entry(TRAILER, 0, EntryMeta::root(0), 1, b"")?;
        self.out.flush().map_err(|source| CpioError::Write {
            name: TRAILER.to_owned(),
            source,
        })?;
        Ok(self.out)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        meta: EntryMeta,
        nlink: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        let too_large = |size: u64| CpioError::TooLarge {
            name: name.to_owned(),
            size,
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_large(data.len() as u64))?;
        // The name size counts the terminating NUL.
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len() as u64))?;
        let header = header_bytes(ino, meta, nlink, filesize, namesize);
        let name_pad = pad4(HEADER_LEN + name.len() + 1);
        let data_pad = pad4(data.len());
        let wrap = |source| CpioError::Write {
            name: name.to_owned(),
            source,
        };
        self.out.write_all(&header).map_err(wrap)?;
        self.out.write_all(name.as_bytes()).map_err(wrap)?;
        self.out
            .write_all(&[0u8; 4][..1 + name_pad])
            .map_err(wrap)?;
        self.out.write_all(data).map_err(wrap)?;
        self.out.write_all(&[0u8; 4][..data_pad]).map_err(wrap)?;
        self.written += (HEADER_LEN + name.len() + 1 + name_pad + data.len() + data_pad) as u64;
        Ok(())
    }
}

/// Zero bytes needed to bring `len` to a multiple of 4.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The 110-byte newc header for one entry.
fn header_bytes(
    ino: u32,
    meta: EntryMeta,
    nlink: u32,
    filesize: u32,
    namesize: u32,
) -> [u8; HEADER_LEN] {
    let fields = [
        ino,
        meta.mode,
        meta.uid,
        meta.gid,
        nlink,
        meta.mtime,
        filesize,
        0, // devmajor: the device holding the file; meaningless here
        0, // devminor
        meta.rdev_major,
        meta.rdev_minor,
        namesize,
        0, // check: always 0 in 070701 (no CRC)
    ];
    let mut header = [0u8; HEADER_LEN];
    header[..6].copy_from_slice(NEWC_MAGIC);
    for (i, value) in fields.iter().enumerate() {
        let start = 6 + i * 8;
        header[start..start + 8].copy_from_slice(format!("{value:08X}").as_bytes());
    }
    header
}

fn check_name(name: &str) -> Result<(), CpioError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name == TRAILER
        || name.split('/').any(|c| c.is_empty() || c == "..");
    if bad {
        return Err(CpioError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry as read back by [`read_newc`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct ReadEntry {
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    fn field(buf: &[u8], at: usize, i: usize) -> u32 {
        let s = std::str::from_utf8(&buf[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    /// A strict, independent newc reader for tests: checks the magic, the
    /// padding bytes being zero, and that the archive ends right after the
    /// trailer's padding.
    pub(crate) fn read_newc(buf: &[u8]) -> Vec<ReadEntry> {
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            assert_eq!(&buf[at..at + 6], b"070701", "magic at offset {at}");
            assert_eq!(at % 4, 0, "entry aligned");
            let namesize = field(buf, at, 11) as usize;
            let filesize = field(buf, at, 6) as usize;
            assert_eq!(field(buf, at, 12), 0, "check field");
            let name_start = at + HEADER_LEN;
            let name_bytes = &buf[name_start..name_start + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1])
                .unwrap()
                .to_owned();
            let mut data_start = name_start + namesize;
            while data_start % 4 != 0 {
                assert_eq!(buf[data_start], 0, "name padding is zero");
                data_start += 1;
            }
            let data = buf[data_start..data_start + filesize].to_vec();
            let mut next = data_start + filesize;
            while next % 4 != 0 {
                assert_eq!(buf[next], 0, "data padding is zero");
                next += 1;
            }
            let entry = ReadEntry {
                ino: field(buf, at, 0),
                mode: field(buf, at, 1),
                nlink: field(buf, at, 4),
                mtime: field(buf, at, 5),
                rdev: (field(buf, at, 9), field(buf, at, 10)),
                name,
                data,
            };
            at = next;
            if entry.name == TRAILER {
                assert_eq!(at, buf.len(), "nothing after the trailer");
                return out;
            }
            out.push(entry);
        }
    }

    #[test]
    fn header_matches_the_newc_spec_byte_for_byte() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"hello").unwrap();
        let buf = w.finish().unwrap();
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081ED", // mode: S_IFREG | 0755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000005", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000005", // namesize: "init" + NUL
            "00000000", // check
        );
        assert_eq!(&buf[..HEADER_LEN], expected_header.as_bytes());
        // 110 + 5 = 115 -> one padding byte to 116.
        assert_eq!(&buf[110..116], b"init\0\0");
        // Data "hello" (5) + 3 padding bytes.
        assert_eq!(&buf[116..124], b"hello\0\0\0");
        // Trailer: namesize 11, 110 + 11 = 121 -> 3 padding bytes to 124.
        let trailer = &buf[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[6..14], b"00000000", "trailer ino");
        assert_eq!(&trailer[94..102], b"0000000B", "trailer namesize");
        assert_eq!(&trailer[110..], b"TRAILER!!!\0\0\0\0");
        assert_eq!(buf.len() % 4, 0);
    }

    #[test]
    fn name_padding_for_every_length_mod_4() {
        for len in 1..=8 {
            let name = "a".repeat(len);
            let mut w = CpioWriter::new(Vec::new());
            w.file(&name, 0o644, b"x").unwrap();
            let buf = w.finish().unwrap();
            let data_at = (HEADER_LEN + len + 1).div_ceil(4) * 4;
            assert_eq!(buf[data_at], b'x', "name length {len}");
            let entries = read_newc(&buf);
            assert_eq!(entries[0].name, name);
        }
    }

    #[test]
    fn round_trip_of_every_entry_kind() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, &[1, 2, 3, 4, 5, 6, 7])
            .unwrap();
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let written = w.written();
        let buf = w.finish().unwrap();
        assert!(written < buf.len() as u64, "trailer counted after finish");
        let e = read_newc(&buf);
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "empty"
            ]
        );
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[1].data, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(e[2].mode, S_IFLNK | 0o777);
        assert_eq!(e[2].data, b"/bin/busybox");
        assert_eq!(e[4].mode, S_IFCHR | 0o600);
        assert_eq!(e[4].rdev, (5, 1));
        assert!(e[5].data.is_empty());
        let mut inos: Vec<_> = e.iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), e.len(), "unique inode numbers");
        assert!(e.iter().all(|e| e.mtime == 0));
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        for name in ["", "/abs", "a//b", "a/../b", "nul\0", "TRAILER!!!", "a/"] {
            assert!(
                matches!(w.file(name, 0o644, b""), Err(CpioError::BadName { .. })),
                "{name:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_files_round_trip(
            files in proptest::collection::btree_map(
                "[a-z0-9_.-]{1,12}(/[a-z0-9_.-]{1,12}){0,2}",
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                0..12,
            )
        ) {
            let files: Vec<_> = files
                .into_iter()
                .filter(|(n, _)| check_name(n).is_ok())
                .collect();
            let mut w = CpioWriter::new(Vec::new());
            for (name, data) in &files {
                w.file(name, 0o640, data).unwrap();
            }
            let buf = w.finish().unwrap();
            proptest::prop_assert_eq!(buf.len() % 4, 0);
            let back = read_newc(&buf);
            proptest::prop_assert_eq!(back.len(), files.len());
            for (entry, (name, data)) in back.iter().zip(&files) {
                proptest::prop_assert_eq!(&entry.name, name);
                proptest::prop_assert_eq!(&entry.data, data);
                proptest::prop_assert_eq!(entry.mode, S_IFREG | 0o640);
            }
        }
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let buf = CpioWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(buf.len(), 124);
        assert!(read_newc(&buf).is_empty());
    }
}
