//! Snapshot header + state parser: whatever the bytes, `parse_snapshot`
//! returns an error or a state, never panics or over-allocates.
//!
//! `scripts/fuzz 60 snapshot_header` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_vmm::snapshot::{parse_snapshot, SnapshotHeader};

fuzz_target!(|data: &[u8]| {
    // As a whole file, and as a header claiming a longer file.
    let _ = parse_snapshot(data, data.len() as u64);
    if let Ok(h) = SnapshotHeader::decode(data) {
        let _ = parse_snapshot(data, h.file_len());
    }
});
