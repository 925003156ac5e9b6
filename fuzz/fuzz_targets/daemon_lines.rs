//! Fuzzes the daemon's two line protocols (`nook serve`): nook's own
//! requests and the `devshell-vm` sidecar's, as a client sends them, plus
//! the bounded line reader in front of both. Never a panic; a request
//! that parses is written back as a line that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_serve::daemon::proto::{parse_request, salvage_id};
use nook_serve::daemon::sidecar_proto::{parse_sidecar_request, resolve_in_workspace};
use nook_serve::daemon::{read_bounded_line, LineRead};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_request(data) {
        let line = serde_json::to_vec(&r).expect("a request serializes");
        assert_eq!(parse_request(&line).ok(), Some(r));
    } else {
        let _ = salvage_id(data);
    }
    if let Ok(r) = parse_sidecar_request(data) {
        let line = serde_json::to_vec(&r).expect("a sidecar request serializes");
        assert_eq!(parse_sidecar_request(&line).ok(), Some(r));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some((ws, p)) = s.split_once('\n') {
            if let Some(r) = resolve_in_workspace(ws, p) {
                assert!(r.starts_with('/'), "{r} is relative");
                assert!(
                    !r.split('/').any(|c| c == ".." || c == "."),
                    "{r} not resolved"
                );
            }
        }
    }
    let max = data.first().map_or(1, |b| usize::from(*b) + 1);
    let mut reader = std::io::BufReader::with_capacity(7, data);
    while let Ok(read) = read_bounded_line(&mut reader, max) {
        match read {
            LineRead::Line(l) => assert!(l.len() <= max),
            LineRead::TooLong(_) => {}
            LineRead::Eof => break,
        }
    }
});
