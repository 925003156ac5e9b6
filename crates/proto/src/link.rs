//! The network link between a guest NIC and nook's network back end:
//! Ethernet frames over a Unix stream, each preceded by its length as a
//! 32-bit big-endian number (QEMU's stream-socket netdev framing, which
//! the kvm engine's virtio-net device speaks too).
//!
//! ```text
//! +----------------+----------------------------+----------------+----
//! | len (u32, BE)  | Ethernet frame (len bytes) | len (u32, BE)  | ...
//! +----------------+----------------------------+----------------+----
//! ```

use std::collections::VecDeque;

/// Largest frame carried: a 65520-byte MTU plus the Ethernet header. A
/// longer length means the peer is broken.
pub const MAX_FRAME: usize = 65534;

/// Appends `frame`, length-prefixed, to `out`.
pub fn encode_frame(frame: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Splits the complete frames off the front of `buf` into `out`; returns
/// the bytes used, or `None` when a length is over [`MAX_FRAME`].
pub fn decode_frames(buf: &[u8], out: &mut VecDeque<Vec<u8>>) -> Option<usize> {
    let mut pos = 0;
    while let Some(h) = buf.get(pos..pos + 4) {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_FRAME {
            return None;
        }
        let Some(frame) = buf.get(pos + 4..pos + 4 + len) else {
            break;
        };
        out.push_back(frame.to_vec());
        pos += 4 + len;
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_split_at_their_length_prefixes() {
        let mut buf = Vec::new();
        encode_frame(b"abc", &mut buf);
        encode_frame(b"", &mut buf);
        encode_frame(b"defg", &mut buf);
        let mut out = VecDeque::new();
        // A partial frame stays in the buffer.
        assert_eq!(decode_frames(&buf[..buf.len() - 1], &mut out), Some(11));
        assert_eq!(out, [b"abc".to_vec(), Vec::new()]);
        out.clear();
        assert_eq!(decode_frames(&buf, &mut out), Some(buf.len()));
        assert_eq!(out.len(), 3);
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(decode_frames(&huge, &mut out), None);
    }

    proptest! {
        #[test]
        fn encoding_round_trips(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 0..8)) {
            let mut buf = Vec::new();
            for f in &frames {
                encode_frame(f, &mut buf);
            }
            let mut out = VecDeque::new();
            prop_assert_eq!(decode_frames(&buf, &mut out), Some(buf.len()));
            prop_assert_eq!(out.into_iter().collect::<Vec<_>>(), frames);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frames(&bytes, &mut VecDeque::new());
        }
    }
}
