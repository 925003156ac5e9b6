//! Fuzzes the wire protocol's frame decoder and message parsers with
//! arbitrary bytes split at an arbitrary point: never a panic, never a
//! frame larger than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nook_proto::{Decoder, GuestMsg, HostMsg, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let split = data
        .first()
        .map(|b| *b as usize)
        .unwrap_or(0)
        .min(data.len());
    let mut dec = Decoder::new();
    dec.push(&data[..split]);
    dec.push(&data[split..]);
    while let Ok(Some(frame)) = dec.next_frame() {
        assert!(frame.payload.len() <= MAX_PAYLOAD);
        let _ = GuestMsg::from_frame(&frame);
        let _ = HostMsg::from_frame(&frame);
    }
    let _ = nook_proto::read_frame(&mut &data[..]);
});
