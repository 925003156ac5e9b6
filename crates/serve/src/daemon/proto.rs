//! The daemon's protocol (`nook serve`): one JSON object per line, both
//! ways, over a Unix socket. See docs/daemon.md.
//!
//! Every request carries an `id` (a number or a string) and a `type`;
//! every reply and event carries the `id` of the request it answers and a
//! `type`. Requests on one connection may overlap (an exec streams while
//! other requests are answered); events of one request keep their order.
//! Bytes (stdio, file contents) travel base64-encoded (standard alphabet,
//! with padding) so binary data passes untouched. No line may exceed
//! [`MAX_LINE`] bytes; the daemon answers a longer one with a
//! `line_too_long` error without buffering it.

use std::path::PathBuf;

use nook::FileStat;
use serde::{Deserialize, Serialize};

use crate::desktop::ComputerUseInput;
use crate::state::SessionState;
use crate::wire::{ExecSpec, ProcExit};

/// Version of this protocol, stated in `hello`.
pub const DAEMON_PROTOCOL_VERSION: u32 = 1;

/// Longest line either side sends, in bytes (16 MiB).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Largest decoded chunk a `file_data` event or a `file_write` carries
/// (4 MiB: base64 of it stays well under [`MAX_LINE`]).
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

/// What a `file_read` returns at most when it gives no `max_bytes` (64 MiB).
pub const DEFAULT_READ_CAP: u64 = 64 * 1024 * 1024;

/// A request's id: a number or a string, echoed in every reply and event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(u64),
    Text(String),
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    #[serde(flatten)]
    pub body: RequestBody,
}

/// A share or a volume of a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// A host directory (shares), or a named volume or a disk image path
    /// (volumes; a missing named volume is created).
    pub source: String,
    /// Absolute path in the guest.
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What a new session boots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateSpec {
    /// Session name (default: generated).
    #[serde(default)]
    pub name: Option<String>,
    /// Image reference in the store; the built-in minimal root when absent.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub cpus: Option<u8>,
    /// Variables every command in the session starts with.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub shares: Vec<MountSpec>,
    #[serde(default)]
    pub volumes: Vec<MountSpec>,
    /// Give the guest a NAT network (egress allowed).
    #[serde(default)]
    pub net: bool,
    /// Stop the session after this many idle seconds.
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// Keep the session when this client disconnects (it is still stopped
    /// when the daemon stops). Without it the session belongs to the
    /// connection that created it.
    #[serde(default)]
    pub keep: bool,
    /// Restore this named snapshot (`snapshot`, `nook snapshot create`)
    /// instead of booting.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Give the VM a memory balloon (`{}` for the defaults: statistics
    /// every second, no free page reporting); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<nook::BalloonConfig>,
}

/// A command in a session: the session's [`ExecSpec`] fields (argv, env,
/// cwd, user, tty, stdin, detach, timeout_ms) beside the session's name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub session: String,
    #[serde(flatten)]
    pub spec: ExecSpec,
}

/// A desktop to start: a session (the fields of `session_create`; the
/// image defaults to nook's desktop image, built on first use, and the
/// memory to [`crate::desktop::DESKTOP_MEMORY_MIB`]) with an X display.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesktopCreateSpec {
    #[serde(flatten)]
    pub spec: CreateSpec,
    /// Display size `[width, height]` in pixels (default `[1280, 800]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// Scale screenshots down to fit within `[width, height]`; coordinates
    /// of later actions are then in the scaled screenshot's pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_screenshot_size: Option<[u32; 2]>,
}

/// One action on a desktop session, in the computer-use tools' flat input
/// (`action`, `coordinate`, `text`, ...), beside the session's name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DesktopActionRequest {
    pub session: String,
    #[serde(flatten)]
    pub input: ComputerUseInput,
    /// Scale screenshots down to fit within `[width, height]` from this
    /// action on (the session's desktop keeps it for later actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_screenshot_size: Option<[u32; 2]>,
    /// Wait up to this long after the action until the screen stops
    /// changing before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<u64>,
}

/// The requests, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// The first request of a connection: answered by `hello`; a client
    /// speaking another major version gets `version_mismatch`.
    Handshake {
        version: u32,
        #[serde(default)]
        client: Option<String>,
    },
    /// Boots a session: answered by `session` once it runs.
    SessionCreate(CreateSpec),
    SessionList,
    SessionInspect {
        session: String,
    },
    /// Clean shutdown (volumes synced); the session stays listed as exited.
    SessionStop {
        session: String,
    },
    /// Removes a session (`force` stops a running one first).
    SessionRemove {
        session: String,
        #[serde(default)]
        force: bool,
    },
    /// Starts a command: `started`, then `stdout`/`stderr` events, then
    /// `exit` (or `started` alone with `detach`).
    Exec(ExecRequest),
    /// Stdin bytes for the attached exec whose request id is `exec`.
    ExecStdin {
        exec: RequestId,
        data: String,
    },
    ExecStdinClose {
        exec: RequestId,
    },
    ExecSignal {
        exec: RequestId,
        signal: i32,
    },
    ExecResize {
        exec: RequestId,
        rows: u16,
        cols: u16,
    },
    /// Output of background process `pid` from byte `offset`.
    ProcRead {
        session: String,
        pid: u32,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    ProcStdin {
        session: String,
        pid: u32,
        #[serde(default)]
        data: String,
        #[serde(default)]
        close: bool,
    },
    ProcSignal {
        session: String,
        pid: u32,
        signal: i32,
    },
    /// Answered by `exit` once the process ended.
    ProcWait {
        session: String,
        pid: u32,
    },
    /// Writes a guest file atomically. A file larger than one line sends
    /// its first chunk here with `more: true` and the rest with
    /// `file_write_chunk` naming this request's id; the file appears when
    /// the last chunk (`more: false`) arrived.
    FileWrite {
        session: String,
        path: String,
        #[serde(default = "default_file_mode")]
        mode: u32,
        #[serde(default)]
        data: String,
        #[serde(default)]
        more: bool,
    },
    FileWriteChunk {
        upload: RequestId,
        data: String,
        #[serde(default)]
        more: bool,
    },
    /// `file_data` events of at most [`MAX_CHUNK`] bytes, then `read_done`;
    /// at most `max_bytes` (default [`DEFAULT_READ_CAP`]).
    FileRead {
        session: String,
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    FileList {
        session: String,
        path: String,
    },
    FileStat {
        session: String,
        path: String,
    },
    /// `mkdir -p`.
    FileMkdir {
        session: String,
        path: String,
        #[serde(default = "default_dir_mode")]
        mode: u32,
    },
    /// `rm` (`rm -r` with `recursive`).
    FileRemove {
        session: String,
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Snapshots a session's VM as named snapshot `name` (restore it with
    /// `session_create` `snapshot`); no command may be running.
    Snapshot {
        session: String,
        name: String,
    },
    /// A warm session of configuration `spec`: one started ahead when the
    /// pool has one, else a new one; the pool starts a replacement.
    PoolAcquire {
        #[serde(default)]
        spec: CreateSpec,
    },
    /// Gives an acquired session back: it is removed (a used VM is never
    /// handed out again).
    PoolRelease {
        session: String,
    },
    /// Asks the guest of a session with a balloon to put `balloon_mib` MiB
    /// into it (0 empties it): answered by `ok` at once.
    BalloonSet {
        session: String,
        balloon_mib: u32,
    },
    /// A session's memory: answered by `memory_stats`.
    MemoryStats {
        session: String,
    },
    /// Boots a desktop session: answered by `desktop` once its display
    /// runs. It ends like any session (`session_remove`).
    DesktopCreate(DesktopCreateSpec),
    /// One action on a desktop session: answered by `image`, `position`
    /// or `done`.
    DesktopAction(DesktopActionRequest),
}

fn default_file_mode() -> u32 {
    0o644
}

fn default_dir_mode() -> u32 {
    0o755
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON, or lacks a field its type needs.
    BadRequest,
    /// The `type` is not one this daemon knows.
    UnknownType,
    /// The line is longer than [`MAX_LINE`].
    LineTooLong,
    /// The handshake asked for a protocol version this daemon lacks.
    VersionMismatch,
    /// No such session.
    NoSession,
    /// A session of that name exists.
    SessionExists,
    /// The session is not running (or still running, for a remove).
    SessionState,
    /// No attached exec or upload with that id on this connection.
    NoExec,
    /// No background process with that pid.
    NoProcess,
    /// The program or the guest file does not exist.
    NotFound,
    NotExecutable,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    NotEmpty,
    /// Another I/O failure, in the guest or on the host.
    Io,
    /// The VM, its engine or its agent failed.
    Vm,
    /// An image, volume or snapshot could not be found or used.
    Unavailable,
    #[serde(other)]
    Other,
}

/// One reply or event line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub id: RequestId,
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// Replies and events, by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    Hello {
        version: u32,
        server: String,
        server_version: String,
    },
    /// A session's state (`session_create`, `session_inspect`, `pool_acquire`).
    Session {
        session: SessionState,
    },
    Sessions {
        sessions: Vec<SessionState>,
    },
    /// The command runs; `pid` is its guest pid.
    Started {
        pid: u32,
    },
    /// Output bytes (base64).
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The command ended (the last event of an exec or `proc_wait`).
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    ProcOutput {
        data: String,
        next_offset: u64,
        truncated: bool,
        exit: Option<ProcExit>,
    },
    /// A chunk of a `file_read` (base64).
    FileData {
        data: String,
    },
    /// The end of a `file_read`: the file's size, the bytes sent, and
    /// whether the cap cut it short.
    ReadDone {
        size: u64,
        copied: u64,
        truncated: bool,
    },
    Stat {
        stat: FileStat,
    },
    List {
        entries: Vec<FileStat>,
        truncated: bool,
    },
    Snapshot {
        name: String,
        path: PathBuf,
    },
    /// A session's memory and balloon (`memory_stats`).
    MemoryStats {
        stats: nook::MemoryStats,
    },
    /// A desktop is up (`desktop_create`): its session, the display's size
    /// and the size screenshots come in (the space of coordinates).
    Desktop {
        session: SessionState,
        width: u32,
        height: u32,
        screenshot_width: u32,
        screenshot_height: u32,
    },
    /// A PNG (`screenshot`, `zoom`), base64, of `width` x `height` pixels.
    Image {
        data: String,
        width: u32,
        height: u32,
    },
    /// The pointer (`cursor_position`), in the coordinates actions use.
    Position {
        x: u32,
        y: u32,
    },
    /// A desktop action was carried out.
    Done,
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why a line is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the line is not JSON: {0}")]
    NotJson(String),
    #[error("the request has no `id`")]
    NoId,
    #[error("unknown request type `{0}`")]
    UnknownType(String),
    #[error("bad `{kind}` request: {reason}")]
    Bad { kind: String, reason: String },
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            _ => ErrorCode::BadRequest,
        }
    }
}

const REQUEST_TYPES: &[&str] = &[
    "handshake",
    "session_create",
    "session_list",
    "session_inspect",
    "session_stop",
    "session_remove",
    "exec",
    "exec_stdin",
    "exec_stdin_close",
    "exec_signal",
    "exec_resize",
    "proc_read",
    "proc_stdin",
    "proc_signal",
    "proc_wait",
    "file_write",
    "file_write_chunk",
    "file_read",
    "file_list",
    "file_stat",
    "file_mkdir",
    "file_remove",
    "snapshot",
    "balloon_set",
    "memory_stats",
    "pool_acquire",
    "pool_release",
    "desktop_create",
    "desktop_action",
];

/// Parses one request line (without or with its newline). Pure: the fuzz
/// target's entry point.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    if v.get("id").is_none() {
        return Err(ProtocolError::NoId);
    }
    if !REQUEST_TYPES.contains(&kind.as_str()) {
        return Err(ProtocolError::UnknownType(kind));
    }
    serde_json::from_value(v).map_err(|e| ProtocolError::Bad {
        kind,
        reason: e.to_string(),
    })
}

/// The `id` of a line that is not a valid request, when it has one
/// (`null` in the error reply otherwise).
pub fn salvage_id(line: &[u8]) -> Option<RequestId> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    serde_json::from_value(v.get("id")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::to_line;
    use nook::Winsize;

    fn req(id: u64, body: RequestBody) -> Request {
        Request {
            id: RequestId::Num(id),
            body,
        }
    }

    fn reply(id: RequestId, body: ReplyBody) -> Reply {
        Reply { id, body }
    }

    /// The frozen encoding: a change here breaks clients of other versions.
    #[test]
    fn frozen_samples() {
        let requests: Vec<(Request, &str)> = vec![
            (
                req(
                    1,
                    RequestBody::Handshake {
                        version: 1,
                        client: Some("c".into()),
                    },
                ),
                r#"{"id":1,"type":"handshake","version":1,"client":"c"}"#,
            ),
            (
                req(
                    2,
                    RequestBody::SessionCreate(CreateSpec {
                        name: Some("s".into()),
                        memory_mib: Some(256),
                        env: vec![("K".into(), "V".into())],
                        shares: vec![MountSpec {
                            source: "/h".into(),
                            guest_path: "/g".into(),
                            read_only: true,
                        }],
                        idle_timeout_s: Some(60),
                        ..Default::default()
                    }),
                ),
                r#"{"id":2,"type":"session_create","name":"s","image":null,"memory_mib":256,"cpus":null,"env":[["K","V"]],"shares":[{"source":"/h","guest_path":"/g","read_only":true}],"volumes":[],"net":false,"idle_timeout_s":60,"keep":false,"snapshot":null}"#,
            ),
            (
                req(
                    3,
                    RequestBody::Exec(ExecRequest {
                        session: "s".into(),
                        spec: ExecSpec {
                            argv: vec!["cat".into()],
                            stdin: true,
                            tty: Some(Winsize { rows: 24, cols: 80 }),
                            ..Default::default()
                        },
                    }),
                ),
                r#"{"id":3,"type":"exec","session":"s","argv":["cat"],"env":[],"cwd":null,"user":null,"tty":{"rows":24,"cols":80},"stdin":true,"detach":false,"timeout_ms":null}"#,
            ),
            (
                Request {
                    id: RequestId::Text("a".into()),
                    body: RequestBody::ExecStdin {
                        exec: RequestId::Num(3),
                        data: "aGk=".into(),
                    },
                },
                r#"{"id":"a","type":"exec_stdin","exec":3,"data":"aGk="}"#,
            ),
            (
                req(
                    4,
                    RequestBody::ExecResize {
                        exec: RequestId::Num(3),
                        rows: 1,
                        cols: 2,
                    },
                ),
                r#"{"id":4,"type":"exec_resize","exec":3,"rows":1,"cols":2}"#,
            ),
            (
                req(
                    5,
                    RequestBody::FileWrite {
                        session: "s".into(),
                        path: "/a".into(),
                        mode: 0o600,
                        data: "eA==".into(),
                        more: true,
                    },
                ),
                r#"{"id":5,"type":"file_write","session":"s","path":"/a","mode":384,"data":"eA==","more":true}"#,
            ),
            (
                req(
                    6,
                    RequestBody::PoolAcquire {
                        spec: CreateSpec::default(),
                    },
                ),
                r#"{"id":6,"type":"pool_acquire","spec":{"name":null,"image":null,"memory_mib":null,"cpus":null,"env":[],"shares":[],"volumes":[],"net":false,"idle_timeout_s":null,"keep":false,"snapshot":null}}"#,
            ),
            (
                req(
                    7,
                    RequestBody::SessionCreate(CreateSpec {
                        balloon: Some(nook::BalloonConfig::reporting()),
                        ..CreateSpec::default()
                    }),
                ),
                r#"{"id":7,"type":"session_create","name":null,"image":null,"memory_mib":null,"cpus":null,"env":[],"shares":[],"volumes":[],"net":false,"idle_timeout_s":null,"keep":false,"snapshot":null,"balloon":{"free_page_reporting":true,"stats_interval_s":1}}"#,
            ),
            (
                req(
                    8,
                    RequestBody::BalloonSet {
                        session: "s".into(),
                        balloon_mib: 256,
                    },
                ),
                r#"{"id":8,"type":"balloon_set","session":"s","balloon_mib":256}"#,
            ),
            (
                req(
                    9,
                    RequestBody::MemoryStats {
                        session: "s".into(),
                    },
                ),
                r#"{"id":9,"type":"memory_stats","session":"s"}"#,
            ),
            (
                req(
                    10,
                    RequestBody::DesktopCreate(DesktopCreateSpec {
                        spec: CreateSpec {
                            name: Some("d".into()),
                            ..CreateSpec::default()
                        },
                        size: Some([1024, 768]),
                        max_screenshot_size: Some([512, 512]),
                    }),
                ),
                r#"{"id":10,"type":"desktop_create","name":"d","image":null,"memory_mib":null,"cpus":null,"env":[],"shares":[],"volumes":[],"net":false,"idle_timeout_s":null,"keep":false,"snapshot":null,"size":[1024,768],"max_screenshot_size":[512,512]}"#,
            ),
            (
                req(
                    11,
                    RequestBody::DesktopAction(DesktopActionRequest {
                        session: "d".into(),
                        input: ComputerUseInput {
                            action: "left_click".into(),
                            coordinate: Some([10, 20]),
                            text: Some("shift".into()),
                            ..ComputerUseInput::default()
                        },
                        max_screenshot_size: None,
                        settle_ms: Some(500),
                    }),
                ),
                r#"{"id":11,"type":"desktop_action","session":"d","action":"left_click","coordinate":[10,20],"text":"shift","settle_ms":500}"#,
            ),
            (
                req(
                    12,
                    RequestBody::DesktopAction(DesktopActionRequest {
                        session: "d".into(),
                        input: ComputerUseInput {
                            action: "scroll".into(),
                            scroll_direction: Some("down".into()),
                            scroll_amount: Some(3),
                            duration: Some(0.5),
                            ..ComputerUseInput::default()
                        },
                        max_screenshot_size: Some([640, 480]),
                        settle_ms: None,
                    }),
                ),
                r#"{"id":12,"type":"desktop_action","session":"d","action":"scroll","scroll_direction":"down","scroll_amount":3,"duration":0.5,"max_screenshot_size":[640,480]}"#,
            ),
        ];
        for (r, want) in requests {
            assert_eq!(String::from_utf8(to_line(&r)).unwrap(), format!("{want}\n"));
            assert_eq!(parse_request(want.as_bytes()).unwrap(), r, "{want}");
        }
        let replies: Vec<(Reply, &str)> = vec![
            (
                reply(
                    RequestId::Num(1),
                    ReplyBody::Hello {
                        version: 1,
                        server: "nook".into(),
                        server_version: "0.1.0".into(),
                    },
                ),
                r#"{"id":1,"type":"hello","version":1,"server":"nook","server_version":"0.1.0"}"#,
            ),
            (
                reply(RequestId::Num(3), ReplyBody::Started { pid: 9 }),
                r#"{"id":3,"type":"started","pid":9}"#,
            ),
            (
                reply(
                    RequestId::Num(3),
                    ReplyBody::Stdout {
                        data: "aGkK".into(),
                    },
                ),
                r#"{"id":3,"type":"stdout","data":"aGkK"}"#,
            ),
            (
                reply(
                    RequestId::Num(3),
                    ReplyBody::Exit {
                        code: Some(0),
                        signal: None,
                        timed_out: false,
                    },
                ),
                r#"{"id":3,"type":"exit","code":0,"signal":null,"timed_out":false}"#,
            ),
            (
                reply(
                    RequestId::Num(7),
                    ReplyBody::ReadDone {
                        size: 9,
                        copied: 3,
                        truncated: true,
                    },
                ),
                r#"{"id":7,"type":"read_done","size":9,"copied":3,"truncated":true}"#,
            ),
            (
                reply(RequestId::Num(8), ReplyBody::Ok),
                r#"{"id":8,"type":"ok"}"#,
            ),
            (
                reply(
                    RequestId::Num(9),
                    ReplyBody::MemoryStats {
                        stats: nook::MemoryStats {
                            memory_mib: 512,
                            balloon_mib: 256,
                            guest_total_bytes: None,
                            guest_free_bytes: None,
                            guest_available_bytes: None,
                            host_rss_bytes: Some(1 << 20),
                        },
                    },
                ),
                r#"{"id":9,"type":"memory_stats","stats":{"memory_mib":512,"balloon_mib":256,"guest_total_bytes":null,"guest_free_bytes":null,"guest_available_bytes":null,"host_rss_bytes":1048576}}"#,
            ),
            (
                reply(
                    RequestId::Num(11),
                    ReplyBody::Image {
                        data: "iVBORw==".into(),
                        width: 640,
                        height: 400,
                    },
                ),
                r#"{"id":11,"type":"image","data":"iVBORw==","width":640,"height":400}"#,
            ),
            (
                reply(RequestId::Num(12), ReplyBody::Position { x: 3, y: 4 }),
                r#"{"id":12,"type":"position","x":3,"y":4}"#,
            ),
            (
                reply(RequestId::Num(13), ReplyBody::Done),
                r#"{"id":13,"type":"done"}"#,
            ),
            (
                reply(
                    RequestId::Text("x".into()),
                    ReplyBody::Error {
                        code: ErrorCode::LineTooLong,
                        message: "m".into(),
                    },
                ),
                r#"{"id":"x","type":"error","code":"line_too_long","message":"m"}"#,
            ),
        ];
        for (r, want) in replies {
            assert_eq!(String::from_utf8(to_line(&r)).unwrap(), format!("{want}\n"));
            assert_eq!(serde_json::from_str::<Reply>(want).unwrap(), r, "{want}");
        }
    }

    #[test]
    fn every_request_type_is_listed_and_round_trips() {
        let bodies = vec![
            RequestBody::SessionList,
            RequestBody::SessionInspect {
                session: "s".into(),
            },
            RequestBody::SessionRemove {
                session: "s".into(),
                force: true,
            },
            RequestBody::ProcRead {
                session: "s".into(),
                pid: 1,
                offset: 2,
                max_bytes: Some(3),
            },
            RequestBody::FileRead {
                session: "s".into(),
                path: "/p".into(),
                max_bytes: None,
            },
            RequestBody::Snapshot {
                session: "s".into(),
                name: "n".into(),
            },
            RequestBody::PoolRelease {
                session: "s".into(),
            },
            RequestBody::BalloonSet {
                session: "s".into(),
                balloon_mib: 64,
            },
            RequestBody::MemoryStats {
                session: "s".into(),
            },
            RequestBody::DesktopCreate(DesktopCreateSpec::default()),
            RequestBody::DesktopAction(DesktopActionRequest {
                session: "d".into(),
                input: ComputerUseInput {
                    action: "zoom".into(),
                    region: Some([0, 0, 10, 10]),
                    ..ComputerUseInput::default()
                },
                ..DesktopActionRequest::default()
            }),
        ];
        for body in bodies {
            let r = req(9, body);
            let line = to_line(&r);
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        for t in REQUEST_TYPES {
            // Every listed type is a real variant: a bare one fails on its
            // fields, never as unknown.
            let line = format!(r#"{{"id":1,"type":"{t}"}}"#);
            assert!(
                !matches!(
                    parse_request(line.as_bytes()),
                    Err(ProtocolError::UnknownType(_))
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn bad_lines_are_classified() {
        assert!(matches!(
            parse_request(b"garbage"),
            Err(ProtocolError::NotJson(_))
        ));
        let e = parse_request(br#"{"id":1,"type":"launch_missiles"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownType);
        assert_eq!(
            parse_request(br#"{"type":"session_list"}"#).unwrap_err(),
            ProtocolError::NoId
        );
        let e = parse_request(br#"{"id":1,"type":"exec","argv":["x"]}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert_eq!(
            salvage_id(br#"{"id":"q","type":"nope"}"#),
            Some(RequestId::Text("q".into()))
        );
        assert_eq!(salvage_id(b"{"), None);
        let e: ReplyBody =
            serde_json::from_str(r#"{"type":"error","code":"future_code","message":"m"}"#).unwrap();
        assert_eq!(
            e,
            ReplyBody::Error {
                code: ErrorCode::Other,
                message: "m".into()
            }
        );
    }
}
