//! The kernel inside a bzImage: finding the compressed payload, naming its
//! compression and decompressing it on the host.
//!
//! A bzImage is a real-mode setup (`(setup_sects + 1) * 512` bytes), then
//! the protected-mode part: a small decompressor stub followed by the
//! compressed `vmlinux` ELF. Boot protocol 2.08+ says where that payload is:
//!
//! ```text
//! 0x1f1  u8    setup_sects (0 means 4)
//! 0x202  [4]   "HdrS"
//! 0x206  u16   boot protocol version
//! 0x238  u32   cmdline_size (2.06+)
//! 0x22c  u32   initrd_addr_max
//! 0x248  u32   payload_offset, from the start of the protected-mode part
//! 0x24c  u32   payload_length
//! payload      compressed vmlinux; its last 4 bytes are the le32
//!              uncompressed size (every compressor the kernel uses)
//! ```
//!
//! Decompressed here: LZ4 "legacy" frames (Debian's cloud kernel), gzip
//! and zstd, all with pure-Rust decoders. Not here: xz (the kernel's uses
//! the x86 BCJ filter), bzip2, lzma and lzo; such images boot through
//! their own decompressor.
//!
//! Why: where guest ring 0 is emulated, the bzImage decompressor takes
//! minutes in the guest; the host does the same work in tens of
//! milliseconds, and the `vmlinux` it yields carries a PVH entry point.

use std::io::Read;

/// Largest decompressed kernel accepted (a bound against hostile images).
pub const MAX_VMLINUX_BYTES: usize = 512 << 20;

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Uncompressed size of every block but the last in LZ4's legacy format.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Why no `vmlinux` came out of an image.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// No `HdrS` signature, or a boot protocol older than 2.08.
    #[error("not a bzImage with a payload (boot protocol 2.08+ needed)")]
    NotBzImage,
    /// The payload offset/length point outside the file.
    #[error("bzImage payload ({offset:#x}+{len:#x}) lies outside the {file_len}-byte image")]
    OutOfRange {
        /// Payload start in the file.
        offset: usize,
        /// Payload length.
        len: usize,
        /// Image size.
        file_len: usize,
    },
    /// A compression this module does not decode.
    #[error("bzImage payload compression {0} is not decoded on the host")]
    Unsupported(PayloadCompression),
    /// The compressed stream is corrupt.
    #[error("cannot decompress {compression} bzImage payload")]
    Corrupt {
        /// The compression.
        compression: PayloadCompression,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The decompressed kernel would exceed [`MAX_VMLINUX_BYTES`].
    #[error("decompressed kernel exceeds {MAX_VMLINUX_BYTES} bytes")]
    TooLarge,
    /// What came out is not an ELF file.
    #[error("bzImage payload is not an elf vmlinux")]
    NotElf,
}

/// PayloadCompression of a bzImage payload, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCompression {
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frames (`02 21 4c 18`).
    Lz4Legacy,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// bzip2 (`BZh`).
    Bzip2,
    /// lzma (`5d 00 00`).
    Lzma,
    /// lzo (`89 4c 5a 4f`).
    Lzo,
    /// Uncompressed (`7f 45 4c 46`, CONFIG_KERNEL_UNCOMPRESSED).
    None,
    /// Anything else.
    Unknown,
}

impl std::fmt::Display for PayloadCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Lz4Legacy => "lz4",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Lzma => "lzma",
            Self::Lzo => "lzo",
            Self::None => "none",
            Self::Unknown => "unknown",
        })
    }
}

impl PayloadCompression {
    /// Names the compression of `payload` from its first bytes.
    pub fn detect(payload: &[u8]) -> Self {
        let starts = |m: &[u8]| payload.starts_with(m);
        if starts(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Self::Lz4Legacy
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Self::Xz
        } else if starts(b"BZh") {
            Self::Bzip2
        } else if starts(&[0x5d, 0, 0]) {
            Self::Lzma
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Self::Lzo
        } else if starts(b"\x7fELF") {
            Self::None
        } else {
            Self::Unknown
        }
    }
}

/// The boot-protocol facts of a bzImage that matter once its payload is
/// entered directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageInfo<'a> {
    /// Boot protocol version (e.g. `0x20f`).
    pub version: u16,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_size: u32,
    /// Highest address the initrd may end at.
    pub initrd_addr_max: u32,
    /// The compressed payload (with its trailing size word).
    pub payload: &'a [u8],
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses the setup header of `image` and finds its payload.
pub fn parse_bzimage(image: &[u8]) -> Result<BzImageInfo<'_>, PayloadError> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(PayloadError::NotBzImage);
    }
    let version = le16(image, 0x206).ok_or(PayloadError::NotBzImage)?;
    if version < 0x208 {
        return Err(PayloadError::NotBzImage);
    }
    let setup_sects = match image.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(PayloadError::NotBzImage),
    };
    let field = |at| le32(image, at).ok_or(PayloadError::NotBzImage);
    let initrd_addr_max = field(0x22c)?;
    let cmdline_size = field(0x238)?;
    let pm_start = (setup_sects + 1) * 512;
    let offset = pm_start + field(0x248)? as usize;
    let len = field(0x24c)? as usize;
    let payload = offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .ok_or(PayloadError::OutOfRange {
            offset,
            len,
            file_len: image.len(),
        })?;
    Ok(BzImageInfo {
        version,
        cmdline_size,
        initrd_addr_max,
        payload,
    })
}

/// Decompresses a bzImage payload into the `vmlinux` ELF it holds.
pub fn decompress_payload(payload: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let compression = PayloadCompression::detect(payload);
    let corrupt = |source| PayloadError::Corrupt {
        compression,
        source,
    };
    // The trailing le32 uncompressed size: a capacity hint, and not part of
    // the compressed stream.
    let (body, hint) = match payload.len().checked_sub(4) {
        Some(n) => (&payload[..n], le32(payload, n).unwrap_or(0) as usize),
        None => (payload, 0),
    };
    let mut out = Vec::with_capacity(hint.min(MAX_VMLINUX_BYTES));
    match compression {
        PayloadCompression::Lz4Legacy => lz4_legacy(payload, &mut out)?,
        PayloadCompression::Gzip => {
            read_capped(flate2::read::GzDecoder::new(body), &mut out).map_err(corrupt)?
        }
        PayloadCompression::Zstd => {
            let dec = ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| corrupt(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            read_capped(dec, &mut out).map_err(corrupt)?
        }
        PayloadCompression::None => out.extend_from_slice(payload),
        other => return Err(PayloadError::Unsupported(other)),
    }
    if out.len() > MAX_VMLINUX_BYTES {
        return Err(PayloadError::TooLarge);
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(PayloadError::NotElf);
    }
    Ok(out)
}

/// Reads `r` to its end into `out`, stopping one byte past the cap so that
/// an oversized result is noticed.
fn read_capped(r: impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    r.take(MAX_VMLINUX_BYTES as u64 + 1).read_to_end(out)?;
    Ok(())
}

/// LZ4 legacy: the magic, then blocks of `le32 compressed size` + data, each
/// decoding to at most 8 MiB; a repeated magic starts a concatenated stream.
/// The kernel build appends the le32 uncompressed size, which ends the block
/// list.
fn lz4_legacy(payload: &[u8], out: &mut Vec<u8>) -> Result<(), PayloadError> {
    let corrupt = |e: lz4_flex::block::DecompressError| PayloadError::Corrupt {
        compression: PayloadCompression::Lz4Legacy,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    };
    let mut pos = 4;
    while payload.len().saturating_sub(pos) > 4 {
        let Some(size) = le32(payload, pos) else {
            break;
        };
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        let Some(data) = payload.get(pos + 4..(pos + 4).saturating_add(size)) else {
            break;
        };
        let at = out.len();
        if at > MAX_VMLINUX_BYTES {
            return Err(PayloadError::TooLarge);
        }
        out.resize(at + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(data, &mut out[at..]).map_err(corrupt)?;
        out.truncate(at + n);
        pos += 4 + size;
    }
    Ok(())
}

/// Whether the ELF `elf` carries a Xen PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18, name "Xen") in a `PT_NOTE`
/// segment. Only 64-bit little-endian ELF files are considered.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const PHYS32_ENTRY: u32 = 18;
    let u64_at = |at: usize| -> Option<usize> {
        let v = u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(0x20), le16(elf, 0x36), le16(elf, 0x38))
    else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff.saturating_add(i * usize::from(phentsize));
        if le32(elf, ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let Some(notes) = off.checked_add(size).and_then(|end| elf.get(off..end)) else {
            continue;
        };
        let mut at = 0;
        while let (Some(namesz), Some(descsz), Some(kind)) =
            (le32(notes, at), le32(notes, at + 4), le32(notes, at + 8))
        {
            let name_len = (namesz as usize).next_multiple_of(4);
            let desc_len = (descsz as usize).next_multiple_of(4);
            let name = notes.get(at + 12..at + 12 + namesz as usize);
            if kind == PHYS32_ENTRY && name == Some(b"Xen\0") {
                return true;
            }
            at = at.saturating_add(12 + name_len + desc_len);
        }
    }
    false
}

/// The `vmlinux` of a bzImage, if it can be decompressed here and has a PVH
/// entry point; the reason otherwise.
pub fn extract_pvh_vmlinux(image: &[u8]) -> Result<(BzImageInfo<'_>, Vec<u8>), ExtractError> {
    let info = parse_bzimage(image)?;
    let vmlinux = decompress_payload(info.payload)?;
    if !has_pvh_note(&vmlinux) {
        return Err(ExtractError::NoPvhNote);
    }
    Ok((info, vmlinux))
}

/// Why a bzImage cannot take the PVH fast path.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// No decompressible payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The `vmlinux` has no PVH entry note.
    #[error("the kernel inside the bzImage has no pvh entry note")]
    NoPvhNote,
}

/// Returns the `vmlinux` ELF inside a bzImage (any PVH note not checked).
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, PayloadError> {
    decompress_payload(parse_bzimage(image)?.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A 64-bit ELF header with one PT_NOTE program header holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        e[0x48..0x50].copy_from_slice(&0x78u64.to_le_bytes());
        e[0x60..0x68].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        e.extend_from_slice(notes);
        e
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// A bzImage-shaped file: setup, stub, payload + size word.
    fn bzimage(payload: &[u8], size: u32) -> Vec<u8> {
        let setup_sects = 1u8;
        let pm = (usize::from(setup_sects) + 1) * 512;
        let stub = 0x40;
        let mut img = vec![0u8; pm + stub];
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&(stub as u32).to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        img.extend_from_slice(payload);
        img.extend_from_slice(&size.to_le_bytes());
        img
    }

    fn pvh_elf() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen\0", 18, &0x100_0000u32.to_le_bytes()));
        let mut e = elf_with_notes(&notes);
        e.extend(std::iter::repeat_n(0x90, 100_000));
        e
    }

    fn lz4_legacy_of(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn pvh_note_is_found_among_others_and_absent_otherwise() {
        assert!(has_pvh_note(&pvh_elf()));
        assert!(!has_pvh_note(&elf_with_notes(&note(b"Xen\0", 17, &[0; 4]))));
        assert!(!has_pvh_note(&elf_with_notes(&note(b"Xe\0", 18, &[0; 4]))));
        assert!(!has_pvh_note(b"\x7fELF\x02\x01"));
        // A note size running off the end is not a panic.
        let mut bad = elf_with_notes(&note(b"Xen\0", 18, &[0; 4]));
        bad[0x60..0x68].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!has_pvh_note(&bad));
    }

    #[test]
    fn lz4_gzip_and_zstd_payloads_decompress() {
        let elf = pvh_elf();
        let lz4 = bzimage(&lz4_legacy_of(&elf), elf.len() as u32);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let gz = bzimage(&gz.finish().unwrap(), elf.len() as u32);
        let zst = ruzstd::encoding::compress_to_vec(
            &elf[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let zst = bzimage(&zst, elf.len() as u32);
        for img in [lz4, gz, zst] {
            let (info, got) = extract_pvh_vmlinux(&img).unwrap();
            assert_eq!(got, elf);
            assert_eq!(info.version, 0x20f);
            assert_eq!(info.cmdline_size, 2047);
        }
    }

    #[test]
    fn unsupported_and_broken_images_are_errors() {
        let xz = bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2], 8);
        assert!(matches!(
            extract_vmlinux(&xz),
            Err(PayloadError::Unsupported(PayloadCompression::Xz))
        ));
        assert!(matches!(
            extract_vmlinux(&[0u8; 4096]),
            Err(PayloadError::NotBzImage)
        ));
        let mut img = bzimage(&lz4_legacy_of(b"hello"), 5);
        // Not an ELF inside.
        assert!(matches!(extract_vmlinux(&img), Err(PayloadError::NotElf)));
        // Payload length past the end of the file.
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&img),
            Err(PayloadError::OutOfRange { .. })
        ));
        // Corrupt LZ4 block.
        let mut bad = lz4_legacy_of(&pvh_elf());
        bad[8..40].fill(0xff);
        assert!(matches!(
            extract_vmlinux(&bzimage(&bad, 1)),
            Err(PayloadError::Corrupt { .. })
        ));
        // An ELF without the note does not take the fast path.
        let plain = bzimage(&lz4_legacy_of(&elf_with_notes(&[])), 0);
        assert!(matches!(
            extract_pvh_vmlinux(&plain),
            Err(ExtractError::NoPvhNote)
        ));
    }
}
