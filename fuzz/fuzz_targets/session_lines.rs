//! Fuzzes the session wire (crates/serve/src/wire.rs): the JSON lines a
//! session host reads from its clients and a client reads from the host,
//! and the stdin/file chunks of an exec. Never a panic; whatever parses
//! is written back as a line that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_serve::wire::{decode_bytes, to_line, ExecInput, FileInput, SessionReply, SessionRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<SessionRequest>(data) {
        let back: SessionRequest = serde_json::from_slice(&to_line(&r)).expect("own line parses");
        assert_eq!(back, r);
    }
    if let Ok(r) = serde_json::from_slice::<SessionReply>(data) {
        let back: SessionReply = serde_json::from_slice(&to_line(&r)).expect("own line parses");
        assert_eq!(back, r);
    }
    let _ = serde_json::from_slice::<ExecInput>(data);
    let _ = serde_json::from_slice::<FileInput>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = decode_bytes(s);
    }
});
