//! The Connect protocol as envd speaks it, JSON codec only.
//!
//! Unary calls carry one JSON message as the body (`application/json`);
//! errors are an HTTP status with `{"code","message"}`. Streaming calls
//! (`application/connect+json`) carry *envelopes* both ways:
//!
//! ```text
//! +-------+------------------+-------------------+
//! | flags | length (u32, BE) | JSON message      |
//! | 1 B   | 4 B              | `length` bytes    |
//! +-------+------------------+-------------------+
//! ```
//!
//! The server ends a stream with an envelope whose flags have
//! [`END_STREAM`] set, holding `{}` or `{"error":{"code","message"}}`.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use serde::Serialize;

/// Flags bit of the end-of-stream envelope.
pub const END_STREAM: u8 = 0x02;
/// Flags bit of a compressed envelope (refused: nook negotiates none).
pub const COMPRESSED: u8 = 0x01;
/// Largest envelope a client may send.
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;
/// Content type of streaming calls.
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// Connect error codes nook answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
}

impl Code {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
        }
    }

    /// The HTTP status of a unary error with this code.
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failed RPC: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `{"code","message"}`, the body of a unary error and the `error` of
    /// an end-of-stream envelope.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

/// One envelope holding `msg`.
pub fn envelope<T: Serialize>(msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    frame(0, &json)
}

/// The end-of-stream envelope: success, or `err`.
pub fn end_stream(err: Option<&RpcError>) -> Bytes {
    let body = match err {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.to_json() }),
    };
    frame(END_STREAM, body.to_string().as_bytes())
}

fn frame(flags: u8, json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + json.len());
    b.put_u8(flags);
    b.put_u32(json.len() as u32);
    b.put_slice(json);
    b.freeze()
}

/// Splits envelopes off the front of a growing buffer.
#[derive(Debug, Default)]
pub struct EnvelopeReader {
    buf: BytesMut,
}

impl EnvelopeReader {
    /// Adds bytes read from the request body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole envelope's flags and message, if one is buffered.
    pub fn next(&mut self) -> Result<Option<(u8, Bytes)>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("envelope of {len} bytes is over the {MAX_ENVELOPE}-byte limit"),
            ));
        }
        if flags & COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed envelopes are not supported: send identity",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let mut whole = self.buf.split_to(5 + len);
        Ok(Some((flags, whole.split_off(5).freeze())))
    }

    /// Bytes left that do not make a whole envelope.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_across_split_reads() {
        let a = envelope(&serde_json::json!({"pid": 7}));
        let b = end_stream(Some(&RpcError::new(Code::NotFound, "no such process")));
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut r = EnvelopeReader::default();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            r.push(chunk);
            while let Some(e) = r.next().unwrap() {
                got.push(e);
            }
        }
        assert_eq!(r.pending(), 0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 0);
        assert_eq!(&got[0].1[..], br#"{"pid":7}"#);
        assert_eq!(got[1].0, END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&got[1].1).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no such process");
    }

    #[test]
    fn oversized_and_compressed_envelopes_are_refused() {
        let mut r = EnvelopeReader::default();
        r.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.next().unwrap_err().code, Code::ResourceExhausted);
        let mut r = EnvelopeReader::default();
        r.push(&[COMPRESSED, 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(r.next().unwrap_err().code, Code::Unimplemented);
    }

    #[test]
    fn unary_error_statuses_follow_the_connect_mapping() {
        assert_eq!(Code::NotFound.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::AlreadyExists.http_status(), StatusCode::CONFLICT);
        assert_eq!(
            Code::DeadlineExceeded.http_status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
