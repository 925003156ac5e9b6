//! Real-kernel test support: find the test kernel and extract `vmlinux`
//! from a bzImage whose payload is LZ4 "legacy" compressed (Debian's cloud
//! kernel).

use std::path::PathBuf;

/// `NOOK_TEST_KERNEL`, or `None` after printing why the test is skipped.
pub fn test_kernel() -> Option<PathBuf> {
    match std::env::var_os("NOOK_TEST_KERNEL") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipping: NOOK_TEST_KERNEL not set");
            None
        }
    }
}

/// Why a payload could not be extracted.
#[derive(Debug)]
pub enum ExtractError {
    NotBzImage,
    PayloadOutOfRange,
    NotLz4Legacy([u8; 4]),
    Truncated,
    Lz4(lz4_flex::block::DecompressError),
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Uncompressed size of every block but the last in the legacy format.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Returns the ELF `vmlinux` inside `bzimage`.
///
/// The payload sits at `payload_offset` (header offset 0x248) past the
/// protected-mode start ((setup_sects + 1) * 512) and is
/// `payload_length` bytes long. LZ4 legacy: a magic, then blocks of
/// `le32 compressed size` + data; each decodes to at most 8 MiB. The kernel
/// build appends the le32 uncompressed size, which ends the block list.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ExtractError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(ExtractError::NotBzImage);
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = le32(bzimage, 0x248).ok_or(ExtractError::NotBzImage)? as usize;
    let len = le32(bzimage, 0x24c).ok_or(ExtractError::NotBzImage)? as usize;
    let payload = bzimage
        .get(pm_start + off..pm_start + off + len)
        .ok_or(ExtractError::PayloadOutOfRange)?;
    let magic = le32(payload, 0).ok_or(ExtractError::Truncated)?;
    if magic != LZ4_LEGACY_MAGIC {
        return Err(ExtractError::NotLz4Legacy(payload[..4].try_into().unwrap()));
    }
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(size) = le32(payload, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4; // concatenated stream
            continue;
        }
        let size = size as usize;
        let Some(data) = payload.get(pos + 4..pos + 4 + size) else {
            break; // the trailing uncompressed-size word
        };
        let n = lz4_flex::block::decompress_into(data, &mut block).map_err(ExtractError::Lz4)?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(ExtractError::Truncated);
    }
    Ok(out)
}
