//! Frames: the length-prefixed, multiplexed unit of the byte stream.

use std::io::{self, Read, Write};

/// Size of the frame header: payload length, stream id, kind.
pub const HEADER_LEN: usize = 9;

/// Hard upper bound of a frame's payload. A larger length in a header is an
/// error, never an allocation.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// One frame as it travels on the wire. `kind` stays raw here so that a
/// frame of a kind this side does not know can still be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("channel closed in the middle of a frame ({have} of {want} bytes)")]
    Truncated { have: usize, want: usize },
    #[error("cannot read or write a frame")]
    Io(#[source] io::Error),
}

impl Frame {
    pub fn new(stream: u32, kind: u8, payload: Vec<u8>) -> Frame {
        Frame {
            stream,
            kind,
            payload,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode_parts(self.stream, self.kind, &self.payload, out)
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

fn encode_parts(
    stream: u32,
    kind: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: payload.len() });
    }
    // MAX_PAYLOAD fits in u32, checked above.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&stream.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(usize, u32, u8), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len });
    }
    let stream = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    Ok((len, stream, h[8]))
}

/// Writes one frame with a single `write_all`, so frames written by several
/// threads through one locked writer never interleave.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    stream: u32,
    kind: u8,
    payload: &[u8],
) -> Result<(), FrameError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_parts(stream, kind, payload, &mut buf)?;
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads one frame. `Ok(None)` means the channel closed cleanly between
/// frames; a close inside a frame is [`FrameError::Truncated`].
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            have: got,
            want: HEADER_LEN,
        });
    }
    let (len, stream, kind) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated {
            have: HEADER_LEN + got,
            want: HEADER_LEN + len,
        });
    }
    Ok(Some(Frame {
        stream,
        kind,
        payload,
    }))
}

/// Reads until `buf` is full or the reader reports end of stream; returns
/// how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

/// Incremental decoder for callers that receive bytes in arbitrary pieces
/// (an event loop, a fuzzer). Feed bytes with [`Decoder::push`], take frames
/// with [`Decoder::next_frame`]. After an error the decoder stays failed:
/// the stream has lost framing and cannot be trusted again.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::TooLarge { len: usize::MAX });
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        let (len, stream, kind) = match parse_header(&h) {
            Ok(v) => v,
            Err(e) => {
                self.failed = true;
                self.buf = Vec::new();
                return Err(e);
            }
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame {
            stream,
            kind,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_through_reader() {
        let mut wire = Vec::new();
        write_frame(&mut wire, 7, 5, b"hello").unwrap();
        write_frame(&mut wire, 0, 1, b"").unwrap();
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::new(7, 5, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::new(0, 1, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_length_is_rejected_without_allocating() {
        let mut wire = ((MAX_PAYLOAD + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0, 0, 0, 0, 5]);
        let err = read_frame(&mut &wire[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_PAYLOAD + 1));
        let mut d = Decoder::new();
        d.push(&wire);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        // Once framing is lost the decoder stays failed.
        d.push(&Frame::new(1, 1, vec![]).encode().unwrap());
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn encoding_refuses_oversized_payload() {
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), 1, 1, &big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let wire = Frame::new(3, 4, b"abcdef".to_vec()).encode().unwrap();
        for cut in 1..wire.len() {
            let err = read_frame(&mut &wire[..cut]).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut d = Decoder::new();
            d.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                match d.next_frame() {
                    Ok(Some(f)) => prop_assert!(f.payload.len() <= MAX_PAYLOAD),
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = read_frame(&mut &bytes[..]);
        }

        #[test]
        fn decoder_reassembles_frames_split_anywhere(
            frames in proptest::collection::vec((any::<u32>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            split in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for (s, k, p) in &frames {
                write_frame(&mut wire, *s, *k, p).unwrap();
            }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push((f.stream, f.kind, f.payload));
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.pending(), 0);
        }
    }
}
