//! The snapshot file layout (see `docs/snapshot.md`): a fixed 128-byte
//! header, the state section, then the page-aligned memory section.
//!
//! [`parse_snapshot`] is the one parser of untrusted bytes here; it is
//! fuzzed (`fuzz/fuzz_targets/snapshot_header.rs`) and property-tested.

use serde::{Deserialize, Serialize};

use super::state::MicrovmState;

/// First 8 bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"NOOKSNAP";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 128;
/// Alignment of the memory section (and of every region in it).
pub const PAGE_SIZE: u64 = 4096;
/// Largest state section accepted (a bound for hostile files).
pub const MAX_STATE_LEN: u64 = 64 << 20;

/// Byte offsets of the header fields.
mod off {
    pub const MAGIC: usize = 0x00;
    pub const VERSION: usize = 0x08;
    pub const FLAGS: usize = 0x0c;
    pub const STATE_OFFSET: usize = 0x10;
    pub const STATE_LEN: usize = 0x18;
    pub const STATE_CRC: usize = 0x20;
    pub const PAGE_SIZE: usize = 0x24;
    pub const MEM_OFFSET: usize = 0x28;
    pub const MEM_LEN: usize = 0x30;
    pub const CPU_VENDOR: usize = 0x38;
    pub const CPU_SIGNATURE: usize = 0x44;
    pub const KVM_API: usize = 0x48;
    pub const XSAVE_SIZE: usize = 0x4c;
    pub const HEADER_CRC: usize = 0x7c;
}

/// Why bytes are not a usable snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    /// The file is shorter than its header says.
    #[error("snapshot is truncated: {needed} bytes needed, {actual} present")]
    Truncated {
        /// Bytes the header (or the header itself) requires.
        needed: u64,
        /// Bytes there are.
        actual: u64,
    },
    /// Not a nook snapshot at all.
    #[error("not a nook snapshot (bad magic)")]
    NotASnapshot,
    /// A snapshot of another format version.
    #[error("snapshot format version {found} is not supported (this build reads version {supported}); take a new snapshot")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The header's checksum does not match.
    #[error("snapshot header is corrupt (checksum mismatch)")]
    HeaderChecksum,
    /// The state section's checksum does not match.
    #[error("snapshot state is corrupt (crc32 {computed:#010x}, header says {stored:#010x})")]
    StateChecksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Header fields that cannot describe a valid file.
    #[error("snapshot layout is invalid: {0}")]
    BadLayout(&'static str),
    /// The state section passed its checksum but does not decode.
    #[error("snapshot state cannot be decoded")]
    BadState(#[source] postcard::Error),
}

/// What the restoring host must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCompat {
    /// CPUID vendor string ("GenuineIntel", "AuthenticAMD").
    pub cpu_vendor: [u8; 12],
    /// CPUID leaf 1 EAX without the stepping: family and model.
    pub cpu_signature: u32,
    /// `KVM_GET_API_VERSION`.
    pub kvm_api_version: u32,
    /// Size of the vCPU XSAVE area KVM uses.
    pub xsave_size: u32,
}

impl HostCompat {
    /// This host.
    pub fn current(kvm: &kvm_ioctls::Kvm) -> Self {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        let mut cpu_vendor = [0u8; 12];
        cpu_vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
        cpu_vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
        cpu_vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
        let sig = __cpuid(1).eax & !0xf;
        // KVM_CAP_XSAVE2: the size of the XSAVE area, 0 if only 4 KiB.
        const KVM_CAP_XSAVE2: libc::c_ulong = 208;
        let xsave2 = kvm.check_extension_raw(KVM_CAP_XSAVE2);
        Self {
            cpu_vendor,
            cpu_signature: sig,
            kvm_api_version: kvm.get_api_version() as u32,
            xsave_size: u32::try_from(xsave2).unwrap_or(0).max(4096),
        }
    }

    /// The first field that differs from `host`: (name, snapshot, host).
    pub fn mismatch(&self, host: &HostCompat) -> Option<(&'static str, String, String)> {
        let vendor = |v: &[u8; 12]| String::from_utf8_lossy(v).into_owned();
        if self.cpu_vendor != host.cpu_vendor {
            return Some((
                "cpu vendor",
                vendor(&self.cpu_vendor),
                vendor(&host.cpu_vendor),
            ));
        }
        let pairs = [
            ("cpu family/model", self.cpu_signature, host.cpu_signature),
            (
                "kvm api version",
                self.kvm_api_version,
                host.kvm_api_version,
            ),
            ("xsave size", self.xsave_size, host.xsave_size),
        ];
        pairs
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(n, a, b)| (n, format!("{a:#x}"), format!("{b:#x}")))
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// Where the state section starts.
    pub state_offset: u64,
    /// State section length.
    pub state_len: u64,
    /// CRC-32 (IEEE) of the state section.
    pub state_crc: u32,
    /// Page size the memory section is aligned to.
    pub page_size: u32,
    /// Where the memory section starts (page aligned).
    pub mem_offset: u64,
    /// Memory section length.
    pub mem_len: u64,
    /// Host the snapshot was taken on.
    pub compat: HostCompat,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl SnapshotHeader {
    /// A header for a state section of `state_len` bytes and a memory
    /// section of `mem_len` bytes laid out right after it.
    pub fn new(state: &[u8], mem_len: u64, compat: HostCompat) -> Self {
        let state_offset = HEADER_SIZE as u64;
        let state_len = state.len() as u64;
        Self {
            version: FORMAT_VERSION,
            state_offset,
            state_len,
            state_crc: crc32fast::hash(state),
            page_size: PAGE_SIZE as u32,
            mem_offset: (state_offset + state_len).next_multiple_of(PAGE_SIZE),
            mem_len,
            compat,
        }
    }

    /// Total file length.
    pub fn file_len(&self) -> u64 {
        self.mem_offset.saturating_add(self.mem_len)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(off::MAGIC, &MAGIC);
        put(off::VERSION, &self.version.to_le_bytes());
        put(off::FLAGS, &0u32.to_le_bytes());
        put(off::STATE_OFFSET, &self.state_offset.to_le_bytes());
        put(off::STATE_LEN, &self.state_len.to_le_bytes());
        put(off::STATE_CRC, &self.state_crc.to_le_bytes());
        put(off::PAGE_SIZE, &self.page_size.to_le_bytes());
        put(off::MEM_OFFSET, &self.mem_offset.to_le_bytes());
        put(off::MEM_LEN, &self.mem_len.to_le_bytes());
        put(off::CPU_VENDOR, &self.compat.cpu_vendor);
        put(off::CPU_SIGNATURE, &self.compat.cpu_signature.to_le_bytes());
        put(off::KVM_API, &self.compat.kvm_api_version.to_le_bytes());
        put(off::XSAVE_SIZE, &self.compat.xsave_size.to_le_bytes());
        let crc = crc32fast::hash(&b[..off::HEADER_CRC]);
        b[off::HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads and checks a header: magic, then version, then checksum, then
    /// that the sections are laid out sanely. `bytes` may be longer.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotFormatError> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            // A file too short to hold the magic but that starts like one
            // is a truncated snapshot, anything else a foreign file.
            let n = bytes.len().min(MAGIC.len());
            return Err(if n > 0 && bytes[..n] == MAGIC[..n] {
                SnapshotFormatError::Truncated {
                    needed: HEADER_SIZE as u64,
                    actual: bytes.len() as u64,
                }
            } else {
                SnapshotFormatError::NotASnapshot
            });
        }
        if bytes.len() < off::VERSION + 4 {
            return Err(SnapshotFormatError::Truncated {
                needed: HEADER_SIZE as u64,
                actual: bytes.len() as u64,
            });
        }
        let version = u32_at(bytes, off::VERSION);
        if version != FORMAT_VERSION {
            return Err(SnapshotFormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if bytes.len() < HEADER_SIZE {
            return Err(SnapshotFormatError::Truncated {
                needed: HEADER_SIZE as u64,
                actual: bytes.len() as u64,
            });
        }
        let b = &bytes[..HEADER_SIZE];
        if crc32fast::hash(&b[..off::HEADER_CRC]) != u32_at(b, off::HEADER_CRC) {
            return Err(SnapshotFormatError::HeaderChecksum);
        }
        if u32_at(b, off::FLAGS) != 0 {
            return Err(SnapshotFormatError::BadLayout("unknown flags"));
        }
        let mut cpu_vendor = [0u8; 12];
        cpu_vendor.copy_from_slice(&b[off::CPU_VENDOR..off::CPU_VENDOR + 12]);
        let h = Self {
            version,
            state_offset: u64_at(b, off::STATE_OFFSET),
            state_len: u64_at(b, off::STATE_LEN),
            state_crc: u32_at(b, off::STATE_CRC),
            page_size: u32_at(b, off::PAGE_SIZE),
            mem_offset: u64_at(b, off::MEM_OFFSET),
            mem_len: u64_at(b, off::MEM_LEN),
            compat: HostCompat {
                cpu_vendor,
                cpu_signature: u32_at(b, off::CPU_SIGNATURE),
                kvm_api_version: u32_at(b, off::KVM_API),
                xsave_size: u32_at(b, off::XSAVE_SIZE),
            },
        };
        h.check_layout()?;
        Ok(h)
    }

    fn check_layout(&self) -> Result<(), SnapshotFormatError> {
        use SnapshotFormatError::BadLayout;
        if u64::from(self.page_size) != PAGE_SIZE {
            return Err(BadLayout("page size is not 4096"));
        }
        if self.state_offset < HEADER_SIZE as u64 {
            return Err(BadLayout("state overlaps the header"));
        }
        if self.state_len > MAX_STATE_LEN {
            return Err(BadLayout("state section too large"));
        }
        let state_end = self
            .state_offset
            .checked_add(self.state_len)
            .ok_or(BadLayout("state section out of range"))?;
        if self.mem_offset % PAGE_SIZE != 0 || self.mem_len % PAGE_SIZE != 0 {
            return Err(BadLayout("memory section not page aligned"));
        }
        if self.mem_offset < state_end {
            return Err(BadLayout("memory overlaps the state"));
        }
        if self.mem_offset.checked_add(self.mem_len).is_none() || self.mem_len == 0 {
            return Err(BadLayout("memory section out of range"));
        }
        Ok(())
    }
}

/// Parses a snapshot's header and state section. `bytes` holds at least
/// the file's first `state_offset + state_len` bytes (more is fine);
/// `file_len` is the whole file's length (the memory section is not
/// read, only required to be there). Never panics, whatever the bytes.
pub fn parse_snapshot(
    bytes: &[u8],
    file_len: u64,
) -> Result<(SnapshotHeader, MicrovmState), SnapshotFormatError> {
    let header = SnapshotHeader::decode(bytes)?;
    let state_end = header.state_offset + header.state_len;
    let needed = header.file_len();
    if file_len < needed {
        return Err(SnapshotFormatError::Truncated {
            needed,
            actual: file_len,
        });
    }
    if (bytes.len() as u64) < state_end {
        return Err(SnapshotFormatError::Truncated {
            needed: state_end,
            actual: bytes.len() as u64,
        });
    }
    let state = &bytes[header.state_offset as usize..state_end as usize];
    let computed = crc32fast::hash(state);
    if computed != header.state_crc {
        return Err(SnapshotFormatError::StateChecksum {
            stored: header.state_crc,
            computed,
        });
    }
    let state = decode_state(state)?;
    Ok((header, state))
}

/// Decodes a state section (no checksum involved).
pub fn decode_state(bytes: &[u8]) -> Result<MicrovmState, SnapshotFormatError> {
    let (state, rest) =
        postcard::take_from_bytes::<MicrovmState>(bytes).map_err(SnapshotFormatError::BadState)?;
    if !rest.is_empty() {
        return Err(SnapshotFormatError::BadLayout(
            "trailing bytes after the state",
        ));
    }
    Ok(state)
}

/// Encodes a state section.
pub fn encode_state(state: &MicrovmState) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compat() -> HostCompat {
        HostCompat {
            cpu_vendor: *b"AuthenticAMD",
            cpu_signature: 0xa10f10,
            kvm_api_version: 12,
            xsave_size: 4096,
        }
    }

    #[test]
    fn header_round_trips_and_lays_out_memory_on_a_page() {
        let h = SnapshotHeader::new(&[1, 2, 3], 8192, compat());
        assert_eq!(h.mem_offset, 4096);
        assert_eq!(h.file_len(), 4096 + 8192);
        let b = h.encode();
        assert_eq!(&b[..8], b"NOOKSNAP");
        assert_eq!(SnapshotHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn header_errors_are_distinct() {
        let b = SnapshotHeader::new(&[0; 10], 4096, compat()).encode();
        let mut foreign = b;
        foreign[0] = b'X';
        assert!(matches!(
            SnapshotHeader::decode(&foreign),
            Err(SnapshotFormatError::NotASnapshot)
        ));
        assert!(matches!(
            SnapshotHeader::decode(b"\x7fELF"),
            Err(SnapshotFormatError::NotASnapshot)
        ));
        assert!(matches!(
            SnapshotHeader::decode(&b[..40]),
            Err(SnapshotFormatError::Truncated { .. })
        ));
        assert!(matches!(
            SnapshotHeader::decode(&b[..4]),
            Err(SnapshotFormatError::Truncated { .. })
        ));
        let mut v1 = b;
        v1[8] = 1;
        assert!(matches!(
            SnapshotHeader::decode(&v1),
            Err(SnapshotFormatError::UnsupportedVersion {
                found: 1,
                supported: FORMAT_VERSION
            })
        ));
        let mut bent = b;
        bent[0x31] ^= 1;
        assert!(matches!(
            SnapshotHeader::decode(&bent),
            Err(SnapshotFormatError::HeaderChecksum)
        ));
        let mut h = SnapshotHeader::new(&[0; 10], 4096, compat());
        h.mem_offset = 100;
        assert!(matches!(
            SnapshotHeader::decode(&h.encode()),
            Err(SnapshotFormatError::BadLayout(_))
        ));
    }

    #[test]
    fn compat_mismatch_names_the_field() {
        let a = compat();
        assert_eq!(a.mismatch(&a), None);
        let mut b = a;
        b.cpu_vendor = *b"GenuineIntel";
        assert_eq!(a.mismatch(&b).unwrap().0, "cpu vendor");
        let mut c = a;
        c.xsave_size = 8192;
        let (what, snap, host) = a.mismatch(&c).unwrap();
        assert_eq!(
            (what, snap.as_str(), host.as_str()),
            ("xsave size", "0x1000", "0x2000")
        );
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<HostCompat>(&bytes).unwrap(), a);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), extra in 0u64..1 << 40) {
            let _ = parse_snapshot(&bytes, bytes.len() as u64 + extra);
        }

        #[test]
        fn parser_never_panics_on_random_states(state in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), flip in 0usize..2048) {
            // A valid header with a matching checksum over random state
            // bytes: the decoder itself sees garbage.
            let h = SnapshotHeader::new(&state, 4096, compat());
            let mut file = h.encode().to_vec();
            file.extend_from_slice(&state);
            let len = h.file_len();
            let r = parse_snapshot(&file, len);
            proptest::prop_assert!(r.is_err());
            let i = flip % file.len();
            file[i] ^= 0x5a;
            proptest::prop_assert!(parse_snapshot(&file, len).is_err());
        }
    }
}
