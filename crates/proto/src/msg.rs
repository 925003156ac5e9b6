//! Typed messages carried in frames.
//!
//! Control messages are JSON objects (unknown fields are ignored, so a field
//! can be added without a version bump); stdio messages are raw bytes.

use serde::{Deserialize, Serialize};

use crate::desktop::{DesktopReply, DesktopRequest};
use crate::file::{FileReply, FileRequest};
use crate::flow::{Credit, PipeClosed};
use crate::frame::Frame;

/// Message kinds, the `k` byte of the frame header. Values are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// guest -> host, control stream: the agent is up ([`GuestHello`]).
    GuestHello = 1,
    /// host -> guest, control stream: the host's answer ([`HostHello`]).
    HostHello = 2,
    /// host -> guest: start a command on this stream ([`ExecRequest`]).
    Exec = 3,
    /// guest -> host: the command started ([`Started`]).
    Started = 4,
    /// host -> guest: stdin bytes; an empty payload closes stdin.
    Stdin = 5,
    /// guest -> host: stdout bytes.
    Stdout = 6,
    /// guest -> host: stderr bytes.
    Stderr = 7,
    /// guest -> host: the command ended ([`Exited`]); last frame of a stream.
    Exit = 8,
    /// guest -> host: a request failed ([`ErrorReply`]); last frame of a stream.
    Error = 9,
    /// host -> guest: deliver a signal to the command's process group.
    Signal = 10,
    /// host -> guest: the terminal changed size ([`Winsize`]).
    Resize = 11,
    /// host -> guest, control stream: sync and power off.
    Shutdown = 12,
    /// host -> guest, control stream: the VM was restored from a snapshot;
    /// set the clock and reseed the entropy pool ([`Resync`]).
    Resync = 13,
    /// either way: the consumer of a pipe grants its producer more bytes
    /// ([`Credit`]; see the `flow` module).
    Credit = 14,
    /// either way: the consumer of a pipe is gone ([`PipeClosed`]).
    PipeClosed = 15,
    /// host -> guest: a file operation on this stream ([`FileRequest`]).
    File = 32,
    /// host -> guest: bytes of a file being written; an empty payload ends it.
    FileChunk = 33,
    /// guest -> host: bytes of a file being read.
    FileContent = 34,
    /// guest -> host: a file operation succeeded ([`FileReply`]); last frame.
    FileDone = 35,
    /// host -> guest: a desktop action on this stream ([`DesktopRequest`]).
    Desktop = 40,
    /// guest -> host: bytes of the PNG a desktop action produced.
    DesktopImage = 41,
    /// guest -> host: a desktop action succeeded ([`DesktopReply`]); last
    /// frame.
    DesktopDone = 42,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => GuestHello,
            2 => HostHello,
            3 => Exec,
            4 => Started,
            5 => Stdin,
            6 => Stdout,
            7 => Stderr,
            8 => Exit,
            9 => Error,
            10 => Signal,
            11 => Resize,
            12 => Shutdown,
            13 => Resync,
            14 => Credit,
            15 => PipeClosed,
            32 => File,
            33 => FileChunk,
            34 => FileContent,
            35 => FileDone,
            40 => Desktop,
            41 => DesktopImage,
            42 => DesktopDone,
            _ => return None,
        })
    }
}

/// What can go wrong turning a frame into a message.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("unknown message kind {kind} on stream {stream}")]
    UnknownKind { kind: u8, stream: u32 },
    #[error("message kind {kind:?} is not valid in this direction")]
    WrongDirection { kind: Kind },
    #[error("malformed {kind:?} message")]
    Malformed {
        kind: Kind,
        #[source]
        source: serde_json::Error,
    },
}

/// First message of the agent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHello {
    pub protocol: u32,
    pub agent_version: String,
    #[serde(default)]
    pub kernel_release: String,
    /// Optional services this agent offers beyond the protocol version's
    /// core ([`FEATURE_DESKTOP`]); omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The agent serves `Desktop` requests (an agent without it ignores them).
pub const FEATURE_DESKTOP: &str = "desktop";

/// The host's answer to [`GuestHello`]. The agent serves nothing before it
/// has seen a `HostHello` with its own protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHello {
    pub protocol: u32,
    /// Host wall-clock time, nanoseconds since the Unix epoch: the agent sets
    /// the guest clock from it.
    #[serde(default)]
    pub time_ns: Option<u64>,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
}

/// Start a command.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH` when it
    /// has no `/`.
    pub argv: Vec<String>,
    /// Environment added to the agent's base environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's default (`/`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Whether the host streams stdin; otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout and stderr merge).
    #[serde(default)]
    pub tty: Option<Winsize>,
    /// Kill the command's whole process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run as this user: `name`, `uid`, `uid:gid`, `name:group` (names are
    /// resolved from the guest root's `/etc/passwd` and `/etc/group`); root
    /// when absent. Omitted from the encoding when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The command is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Exited {
    /// Exit code, when the command exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The agent killed it because its timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The program does not exist (a shell would exit 127).
    NotFound,
    /// The program exists but cannot be executed (a shell would exit 126).
    NotExecutable,
    /// The request itself is invalid (empty argv, bad cwd, ...).
    BadRequest,
    /// Host and agent speak different protocol versions.
    VersionMismatch,
    /// Something failed inside the agent.
    Internal,
    /// A file operation met a file where it needs a directory.
    NotADirectory,
    /// A file operation met a directory where it needs a file.
    IsADirectory,
    /// The guest refused access to a file.
    PermissionDenied,
    /// A directory that is not empty (remove without `recursive`).
    NotEmpty,
    /// Any other I/O failure in the guest.
    Io,
    /// A code this side does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Sent after a restore: every clone of a snapshot must get the host's
/// time and its own entropy, or clones would share clocks and random bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    /// Host wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Fresh random bytes from the host, mixed into the guest's pool before
    /// it is forced to reseed.
    pub entropy: Vec<u8>,
    /// A fresh MAC address for the guest's NIC (`02:..`), when it has one:
    /// a clone must not share its parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SignalBody {
    signal: i32,
}

/// Messages the guest agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    Hello(GuestHello),
    Started(Started),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exited),
    Error(ErrorReply),
    /// Stdin credit: the command took this many more bytes.
    Credit(Credit),
    /// The command's stdin is closed: send no more.
    PipeClosed(PipeClosed),
    FileContent(Vec<u8>),
    FileDone(FileReply),
    /// PNG bytes of a desktop action's image.
    DesktopImage(Vec<u8>),
    DesktopDone(DesktopReply),
}

/// Messages the host sends.
#[derive(Debug, Clone, PartialEq)]
pub enum HostMsg {
    Hello(HostHello),
    Exec(ExecRequest),
    /// Stdin bytes; empty means end of input.
    Stdin(Vec<u8>),
    Signal(i32),
    Resize(Winsize),
    Shutdown,
    Resync(Resync),
    /// Stdout or stderr credit: the host's reader took this many more bytes.
    Credit(Credit),
    /// The host's reader of stdout or stderr is gone.
    PipeClosed(PipeClosed),
    File(FileRequest),
    /// Bytes of a file being written; empty ends it.
    FileChunk(Vec<u8>),
    Desktop(DesktopRequest),
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail: no maps with
    // non-string keys, no custom serializers.
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<'a, T: Deserialize<'a>>(kind: Kind, payload: &'a [u8]) -> Result<T, MsgError> {
    serde_json::from_slice(payload).map_err(|source| MsgError::Malformed { kind, source })
}

fn kind_of(frame: &Frame) -> Result<Kind, MsgError> {
    Kind::from_u8(frame.kind).ok_or(MsgError::UnknownKind {
        kind: frame.kind,
        stream: frame.stream,
    })
}

impl GuestMsg {
    pub fn kind(&self) -> Kind {
        match self {
            GuestMsg::Hello(_) => Kind::GuestHello,
            GuestMsg::Started(_) => Kind::Started,
            GuestMsg::Stdout(_) => Kind::Stdout,
            GuestMsg::Stderr(_) => Kind::Stderr,
            GuestMsg::Exit(_) => Kind::Exit,
            GuestMsg::Error(_) => Kind::Error,
            GuestMsg::Credit(_) => Kind::Credit,
            GuestMsg::PipeClosed(_) => Kind::PipeClosed,
            GuestMsg::FileContent(_) => Kind::FileContent,
            GuestMsg::FileDone(_) => Kind::FileDone,
            GuestMsg::DesktopImage(_) => Kind::DesktopImage,
            GuestMsg::DesktopDone(_) => Kind::DesktopDone,
        }
    }

    pub fn to_frame(&self, stream: u32) -> Frame {
        let payload = match self {
            GuestMsg::Hello(m) => json(m),
            GuestMsg::Started(m) => json(m),
            GuestMsg::Stdout(b)
            | GuestMsg::Stderr(b)
            | GuestMsg::FileContent(b)
            | GuestMsg::DesktopImage(b) => b.clone(),
            GuestMsg::DesktopDone(m) => json(m),
            GuestMsg::FileDone(m) => json(m),
            GuestMsg::Exit(m) => json(m),
            GuestMsg::Error(m) => json(m),
            GuestMsg::Credit(m) => json(m),
            GuestMsg::PipeClosed(m) => json(m),
        };
        Frame::new(stream, self.kind() as u8, payload)
    }

    pub fn from_frame(frame: &Frame) -> Result<GuestMsg, MsgError> {
        let kind = kind_of(frame)?;
        let p = &frame.payload;
        Ok(match kind {
            Kind::GuestHello => GuestMsg::Hello(parse(kind, p)?),
            Kind::Started => GuestMsg::Started(parse(kind, p)?),
            Kind::Stdout => GuestMsg::Stdout(p.clone()),
            Kind::Stderr => GuestMsg::Stderr(p.clone()),
            Kind::Exit => GuestMsg::Exit(parse(kind, p)?),
            Kind::Error => GuestMsg::Error(parse(kind, p)?),
            Kind::Credit => GuestMsg::Credit(parse(kind, p)?),
            Kind::PipeClosed => GuestMsg::PipeClosed(parse(kind, p)?),
            Kind::FileContent => GuestMsg::FileContent(p.clone()),
            Kind::FileDone => GuestMsg::FileDone(parse(kind, p)?),
            Kind::DesktopImage => GuestMsg::DesktopImage(p.clone()),
            Kind::DesktopDone => GuestMsg::DesktopDone(parse(kind, p)?),
            other => return Err(MsgError::WrongDirection { kind: other }),
        })
    }
}

impl HostMsg {
    pub fn kind(&self) -> Kind {
        match self {
            HostMsg::Hello(_) => Kind::HostHello,
            HostMsg::Exec(_) => Kind::Exec,
            HostMsg::Stdin(_) => Kind::Stdin,
            HostMsg::Signal(_) => Kind::Signal,
            HostMsg::Resize(_) => Kind::Resize,
            HostMsg::Shutdown => Kind::Shutdown,
            HostMsg::Resync(_) => Kind::Resync,
            HostMsg::Credit(_) => Kind::Credit,
            HostMsg::PipeClosed(_) => Kind::PipeClosed,
            HostMsg::File(_) => Kind::File,
            HostMsg::FileChunk(_) => Kind::FileChunk,
            HostMsg::Desktop(_) => Kind::Desktop,
        }
    }

    pub fn to_frame(&self, stream: u32) -> Frame {
        let payload = match self {
            HostMsg::Hello(m) => json(m),
            HostMsg::Exec(m) => json(m),
            HostMsg::Stdin(b) => b.clone(),
            HostMsg::Signal(signal) => json(&SignalBody { signal: *signal }),
            HostMsg::Resize(m) => json(m),
            HostMsg::Shutdown => Vec::new(),
            HostMsg::Resync(m) => json(m),
            HostMsg::Credit(m) => json(m),
            HostMsg::PipeClosed(m) => json(m),
            HostMsg::File(m) => json(m),
            HostMsg::FileChunk(b) => b.clone(),
            HostMsg::Desktop(m) => json(m),
        };
        Frame::new(stream, self.kind() as u8, payload)
    }

    pub fn from_frame(frame: &Frame) -> Result<HostMsg, MsgError> {
        let kind = kind_of(frame)?;
        let p = &frame.payload;
        Ok(match kind {
            Kind::HostHello => HostMsg::Hello(parse(kind, p)?),
            Kind::Exec => HostMsg::Exec(parse(kind, p)?),
            Kind::Stdin => HostMsg::Stdin(p.clone()),
            Kind::Signal => HostMsg::Signal(parse::<SignalBody>(kind, p)?.signal),
            Kind::Resize => HostMsg::Resize(parse(kind, p)?),
            Kind::Shutdown => HostMsg::Shutdown,
            Kind::Resync => HostMsg::Resync(parse(kind, p)?),
            Kind::Credit => HostMsg::Credit(parse(kind, p)?),
            Kind::PipeClosed => HostMsg::PipeClosed(parse(kind, p)?),
            Kind::File => HostMsg::File(parse(kind, p)?),
            Kind::FileChunk => HostMsg::FileChunk(p.clone()),
            Kind::Desktop => HostMsg::Desktop(parse(kind, p)?),
            other => return Err(MsgError::WrongDirection { kind: other }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Pipe;
    use proptest::prelude::*;

    #[test]
    fn every_kind_byte_round_trips() {
        for b in 0..=255u8 {
            if let Some(k) = Kind::from_u8(b) {
                assert_eq!(k as u8, b);
            }
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(16), None);
        assert_eq!(Kind::from_u8(36), None);
        assert_eq!(Kind::from_u8(43), None);
    }

    #[test]
    fn direction_is_enforced() {
        let f = HostMsg::Shutdown.to_frame(0);
        assert!(matches!(
            GuestMsg::from_frame(&f),
            Err(MsgError::WrongDirection {
                kind: Kind::Shutdown
            })
        ));
        let f = GuestMsg::Stdout(b"x".to_vec()).to_frame(1);
        assert!(matches!(
            HostMsg::from_frame(&f),
            Err(MsgError::WrongDirection { .. })
        ));
    }

    #[test]
    fn unknown_error_codes_from_newer_peers_decode_as_other() {
        let f = Frame::new(
            1,
            Kind::Error as u8,
            br#"{"code":"quota","message":"m"}"#.to_vec(),
        );
        let GuestMsg::Error(e) = GuestMsg::from_frame(&f).unwrap() else {
            panic!("not an error reply");
        };
        assert_eq!(e.code, ErrorCode::Other);
    }

    #[test]
    fn exec_request_fills_defaults_for_missing_fields() {
        let f = Frame::new(1, Kind::Exec as u8, br#"{"argv":["true"]}"#.to_vec());
        let HostMsg::Exec(r) = HostMsg::from_frame(&f).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(r.argv, vec!["true"]);
        assert!(!r.stdin && r.env.is_empty() && r.cwd.is_none() && r.timeout_ms.is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(kind in any::<u8>(), stream in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let f = Frame::new(stream, kind, payload);
            let _ = GuestMsg::from_frame(&f);
            let _ = HostMsg::from_frame(&f);
        }

        #[test]
        fn flow_messages_round_trip_both_ways(bytes in any::<u64>(), pipe in 0..3usize) {
            let pipe = [Pipe::Stdin, Pipe::Stdout, Pipe::Stderr][pipe];
            let g = GuestMsg::Credit(Credit { pipe, bytes });
            prop_assert_eq!(GuestMsg::from_frame(&g.to_frame(4)).unwrap(), g);
            let h = HostMsg::Credit(Credit { pipe, bytes });
            prop_assert_eq!(HostMsg::from_frame(&h.to_frame(4)).unwrap(), h);
            let g = GuestMsg::PipeClosed(PipeClosed { pipe });
            prop_assert_eq!(GuestMsg::from_frame(&g.to_frame(4)).unwrap(), g);
            let h = HostMsg::PipeClosed(PipeClosed { pipe });
            prop_assert_eq!(HostMsg::from_frame(&h.to_frame(4)).unwrap(), h);
        }

        #[test]
        fn exec_requests_round_trip(argv in proptest::collection::vec(".*", 1..4), cwd in proptest::option::of(".*"), t in proptest::option::of(any::<u64>())) {
            let m = HostMsg::Exec(ExecRequest { argv, cwd, timeout_ms: t, stdin: true, ..Default::default() });
            prop_assert_eq!(HostMsg::from_frame(&m.to_frame(9)).unwrap(), m);
        }
    }
}
