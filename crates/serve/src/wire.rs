//! The session socket's protocol: one JSON object per line, both ways.
//!
//! A client opens one connection per operation. The first line is a
//! [`SessionRequest`]; the host answers with [`SessionReply`] lines. For an
//! attached exec the client may then send [`ExecInput`] lines (stdin,
//! signals, resizes) while the host streams output; the `exit` (or `error`)
//! reply is the last line of the connection. Bytes travel base64-encoded so
//! binary output passes untouched. Lines longer than [`MAX_LINE`] are refused.

use base64::Engine as _;
use nook::{DesktopReply, DesktopRequest, FileStat, Winsize};
use serde::{Deserialize, Serialize};

/// Longest line either side accepts, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// Version of this protocol; the host states it in `hello`.
pub const SESSION_PROTOCOL_VERSION: u32 = 1;

/// What a command runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Run on a terminal of this size.
    #[serde(default)]
    pub tty: Option<Winsize>,
    /// The client streams stdin (else stdin is empty).
    #[serde(default)]
    pub stdin: bool,
    /// Run in the background: the host replies `started` and closes; the
    /// process outlives the connection and its output goes to the session's
    /// process log.
    #[serde(default)]
    pub detach: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// With `detach`: a service of the session (a desktop's X server and
    /// window manager) that does not count as a running command, so it
    /// does not keep the session from stopping on its idle timeout.
    /// Absent (false) when not set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
}

/// The first line of a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionRequest {
    /// Protocol version and session name.
    Hello,
    Exec(ExecSpec),
    /// Signal a detached process (by its guest pid).
    Signal {
        pid: u32,
        signal: i32,
    },
    /// Output of background process `pid` (stdout and stderr as they
    /// came) from byte `offset`, at most `max_bytes` (capped at
    /// [`MAX_PROC_READ`]); answered by `proc_output`.
    ProcRead {
        pid: u32,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Stdin bytes (base64) for background process `pid` (started with
    /// `stdin`), then end of input with `close`.
    ProcStdin {
        pid: u32,
        #[serde(default)]
        data: String,
        #[serde(default)]
        close: bool,
    },
    /// Waits until background process `pid` ends: answered by `exit`.
    ProcWait {
        pid: u32,
    },
    /// The guest console's last `lines` lines.
    Logs {
        lines: usize,
    },
    /// Shut the guest down cleanly (volumes synced) and end the session.
    Stop,
    /// Snapshot the VM into the new directory `path` (no command may be
    /// running, unless `running`); the session runs on.
    Snapshot {
        path: std::path::PathBuf,
        /// Snapshot even while commands run: they go on in the snapshot's
        /// guest, but their output and stdin stay with this session.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        running: bool,
    },
    /// Replace guest file `path` with the `chunk` lines that follow, up to
    /// an `end` line ([`FileInput`]); atomic in the guest.
    FileWrite {
        path: String,
        mode: u32,
    },
    /// Guest file `path` as `data` lines, then `read_done`; at most
    /// `max_bytes` of it when given.
    FileRead {
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    FileStat {
        path: String,
    },
    FileList {
        path: String,
    },
    /// `mkdir -p`.
    FileMkdir {
        path: String,
        mode: u32,
    },
    /// `rm` (`rm -r` with `recursive`).
    FileRemove {
        path: String,
        recursive: bool,
    },
    FileSymlink {
        target: String,
        path: String,
    },
    /// A desktop action on the guest's X display (coordinates in screen
    /// pixels); answered by `data` lines with the PNG of an image, then
    /// `desktop`.
    Desktop(DesktopRequest),
    /// Asks the guest to put `balloon_mib` MiB into the VM's memory
    /// balloon (0 empties it); answered by `ok` at once.
    BalloonSet {
        balloon_mib: u32,
    },
    /// The balloon and the VM's memory: answered by `memory_stats`.
    MemoryStats,
}

/// Lines a client sends after `file_write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileInput {
    /// File bytes (base64).
    Chunk { data: String },
    /// The end of the file.
    End,
}

/// Lines a client sends during an attached exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ExecInput {
    /// Stdin bytes (base64).
    Stdin {
        data: String,
    },
    /// End of stdin.
    StdinClose,
    Signal {
        signal: i32,
    },
    Resize(Winsize),
    /// The client's reader of this output pipe is gone: the command's pipe
    /// is closed in the guest (it gets SIGPIPE on its next write there).
    CloseOutput {
        pipe: nook::Pipe,
    },
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionErrorCode {
    /// The line is not a request this host understands.
    BadRequest,
    /// The program does not exist in the guest.
    NotFound,
    /// The program cannot be executed.
    NotExecutable,
    /// No detached process with that pid.
    NoProcess,
    /// The VM or its agent failed.
    Vm,
    /// A guest path names a file where a directory is needed.
    NotADirectory,
    /// A guest path names a directory where a file is needed.
    IsADirectory,
    PermissionDenied,
    /// A non-empty directory (remove without `recursive`).
    NotEmpty,
    /// Another I/O failure in the guest.
    Io,
    /// No X display runs in the guest (start a desktop first).
    NoDisplay,
    /// The X server or the guest agent failed a desktop action.
    DesktopFailed,
    #[serde(other)]
    Other,
}

/// How a background process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// Most output bytes one `proc_read` returns.
pub const MAX_PROC_READ: u64 = 512 * 1024;

/// Lines the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SessionReply {
    Hello {
        version: u32,
        name: String,
    },
    Started {
        pid: u32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The command ended; last line.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    Logs {
        text: String,
    },
    /// File bytes (base64) of a `file_read`.
    Data {
        data: String,
    },
    /// The end of a `file_read`: the file's size, the bytes sent, and
    /// whether `max_bytes` cut it short.
    ReadDone {
        size: u64,
        copied: u64,
        truncated: bool,
    },
    Stat(FileStat),
    /// A slice of a background process's output.
    ProcOutput {
        /// Base64 bytes.
        data: String,
        /// Where the next read starts.
        next_offset: u64,
        /// More output is there than `max_bytes` allowed.
        truncated: bool,
        /// How it ended, once it has.
        exit: Option<ProcExit>,
    },
    List {
        entries: Vec<FileStat>,
        truncated: bool,
    },
    /// The VM's memory and balloon.
    MemoryStats {
        stats: nook::MemoryStats,
    },
    Ok,
    /// The end of a desktop action: the screen size and the result (an
    /// image's PNG came in the `data` lines before).
    Desktop(DesktopReply),
    Error {
        code: SessionErrorCode,
        message: String,
    },
}

/// Base64 of `bytes`, as stdio lines carry them.
pub fn encode_bytes(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of a base64 stdio field.
pub fn decode_bytes(data: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(data)
}

/// One line (with its newline) for `msg`.
pub fn to_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Plain data structs: serializing to a Vec cannot fail.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frozen encoding: a change here breaks clients of other versions.
    #[test]
    fn frozen_samples() {
        let samples: Vec<(Vec<u8>, &str)> = vec![
            (to_line(&SessionRequest::Hello), r#"{"op":"hello"}"#),
            (
                to_line(&SessionRequest::Exec(ExecSpec {
                    argv: vec!["cat".into()],
                    env: vec![("K".into(), "V".into())],
                    cwd: Some("/tmp".into()),
                    user: None,
                    tty: Some(Winsize { rows: 24, cols: 80 }),
                    stdin: true,
                    detach: false,
                    timeout_ms: Some(5),
                    service: false,
                })),
                r#"{"op":"exec","argv":["cat"],"env":[["K","V"]],"cwd":"/tmp","user":null,"tty":{"rows":24,"cols":80},"stdin":true,"detach":false,"timeout_ms":5}"#,
            ),
            (
                to_line(&SessionRequest::Exec(ExecSpec {
                    argv: vec!["Xvfb".into()],
                    detach: true,
                    service: true,
                    ..ExecSpec::default()
                })),
                r#"{"op":"exec","argv":["Xvfb"],"env":[],"cwd":null,"user":null,"tty":null,"stdin":false,"detach":true,"timeout_ms":null,"service":true}"#,
            ),
            (
                to_line(&SessionRequest::Signal { pid: 7, signal: 15 }),
                r#"{"op":"signal","pid":7,"signal":15}"#,
            ),
            (
                to_line(&SessionRequest::Logs { lines: 10 }),
                r#"{"op":"logs","lines":10}"#,
            ),
            (to_line(&SessionRequest::Stop), r#"{"op":"stop"}"#),
            (
                to_line(&SessionRequest::BalloonSet { balloon_mib: 128 }),
                r#"{"op":"balloon_set","balloon_mib":128}"#,
            ),
            (
                to_line(&SessionRequest::MemoryStats),
                r#"{"op":"memory_stats"}"#,
            ),
            (
                to_line(&SessionReply::MemoryStats {
                    stats: nook::MemoryStats {
                        memory_mib: 512,
                        balloon_mib: 128,
                        guest_total_bytes: Some(1),
                        guest_free_bytes: None,
                        guest_available_bytes: Some(2),
                        host_rss_bytes: Some(3),
                    },
                }),
                r#"{"op":"memory_stats","stats":{"memory_mib":512,"balloon_mib":128,"guest_total_bytes":1,"guest_free_bytes":null,"guest_available_bytes":2,"host_rss_bytes":3}}"#,
            ),
            (
                to_line(&SessionRequest::Snapshot {
                    path: "/s/snap".into(),
                    running: false,
                }),
                r#"{"op":"snapshot","path":"/s/snap"}"#,
            ),
            (
                to_line(&SessionRequest::Snapshot {
                    path: "/s/snap".into(),
                    running: true,
                }),
                r#"{"op":"snapshot","path":"/s/snap","running":true}"#,
            ),
            (
                to_line(&ExecInput::Stdin {
                    data: encode_bytes(b"hi"),
                }),
                r#"{"op":"stdin","data":"aGk="}"#,
            ),
            (to_line(&ExecInput::StdinClose), r#"{"op":"stdin_close"}"#),
            (
                to_line(&ExecInput::CloseOutput {
                    pipe: nook::Pipe::Stdout,
                }),
                r#"{"op":"close_output","pipe":"stdout"}"#,
            ),
            (
                to_line(&ExecInput::Signal { signal: 2 }),
                r#"{"op":"signal","signal":2}"#,
            ),
            (
                to_line(&ExecInput::Resize(Winsize { rows: 1, cols: 2 })),
                r#"{"op":"resize","rows":1,"cols":2}"#,
            ),
            (
                to_line(&SessionReply::Hello {
                    version: 1,
                    name: "s1".into(),
                }),
                r#"{"op":"hello","version":1,"name":"s1"}"#,
            ),
            (
                to_line(&SessionReply::Started { pid: 3 }),
                r#"{"op":"started","pid":3}"#,
            ),
            (
                to_line(&SessionReply::Stdout {
                    data: encode_bytes(b"\xff\x00"),
                }),
                r#"{"op":"stdout","data":"/wA="}"#,
            ),
            (
                to_line(&SessionReply::Exit {
                    code: Some(0),
                    signal: None,
                    timed_out: false,
                }),
                r#"{"op":"exit","code":0,"signal":null,"timed_out":false}"#,
            ),
            (to_line(&SessionReply::Ok), r#"{"op":"ok"}"#),
            (
                to_line(&SessionRequest::ProcRead {
                    pid: 5,
                    offset: 10,
                    max_bytes: None,
                }),
                r#"{"op":"proc_read","pid":5,"offset":10,"max_bytes":null}"#,
            ),
            (
                to_line(&SessionRequest::ProcStdin {
                    pid: 5,
                    data: encode_bytes(b"y"),
                    close: true,
                }),
                r#"{"op":"proc_stdin","pid":5,"data":"eQ==","close":true}"#,
            ),
            (
                to_line(&SessionRequest::ProcWait { pid: 5 }),
                r#"{"op":"proc_wait","pid":5}"#,
            ),
            (
                to_line(&SessionReply::ProcOutput {
                    data: String::new(),
                    next_offset: 3,
                    truncated: false,
                    exit: Some(ProcExit {
                        code: Some(0),
                        signal: None,
                        timed_out: false,
                    }),
                }),
                r#"{"op":"proc_output","data":"","next_offset":3,"truncated":false,"exit":{"code":0,"signal":null,"timed_out":false}}"#,
            ),
            (
                to_line(&SessionRequest::FileWrite {
                    path: "/a".into(),
                    mode: 0o644,
                }),
                r#"{"op":"file_write","path":"/a","mode":420}"#,
            ),
            (
                to_line(&FileInput::Chunk {
                    data: encode_bytes(b"x"),
                }),
                r#"{"op":"chunk","data":"eA=="}"#,
            ),
            (to_line(&FileInput::End), r#"{"op":"end"}"#),
            (
                to_line(&SessionRequest::FileRead {
                    path: "/a".into(),
                    max_bytes: Some(3),
                }),
                r#"{"op":"file_read","path":"/a","max_bytes":3}"#,
            ),
            (
                to_line(&SessionRequest::FileList { path: "/".into() }),
                r#"{"op":"file_list","path":"/"}"#,
            ),
            (
                to_line(&SessionRequest::FileRemove {
                    path: "/a".into(),
                    recursive: true,
                }),
                r#"{"op":"file_remove","path":"/a","recursive":true}"#,
            ),
            (
                to_line(&SessionReply::ReadDone {
                    size: 9,
                    copied: 3,
                    truncated: true,
                }),
                r#"{"op":"read_done","size":9,"copied":3,"truncated":true}"#,
            ),
            (
                to_line(&SessionReply::List {
                    entries: vec![FileStat {
                        name: "l".into(),
                        kind: nook::FileKind::Symlink,
                        size: 1,
                        mode: 0o777,
                        mtime: 2,
                        link_target: Some("t".into()),
                    }],
                    truncated: false,
                }),
                r#"{"op":"list","entries":[{"name":"l","kind":"symlink","size":1,"mode":511,"mtime":2,"link_target":"t"}],"truncated":false}"#,
            ),
            (
                to_line(&SessionRequest::Desktop(nook::DesktopRequest {
                    action: nook::DesktopAction::LeftClick {
                        coordinate: Some([10, 20]),
                        text: None,
                    },
                    display: None,
                    max_image_size: Some([1024, 768]),
                    settle_ms: None,
                })),
                r#"{"op":"desktop","action":{"action":"left_click","coordinate":[10,20]},"max_image_size":[1024,768]}"#,
            ),
            (
                to_line(&SessionReply::Desktop(nook::DesktopReply {
                    screen: [1280, 800],
                    result: nook::DesktopResult::Image {
                        width: 1024,
                        height: 640,
                        bytes: 9,
                    },
                })),
                r#"{"op":"desktop","screen":[1280,800],"result":{"kind":"image","width":1024,"height":640,"bytes":9}}"#,
            ),
            (
                to_line(&SessionReply::Error {
                    code: SessionErrorCode::NoDisplay,
                    message: "m".into(),
                }),
                r#"{"op":"error","code":"no_display","message":"m"}"#,
            ),
            (
                to_line(&SessionReply::Error {
                    code: SessionErrorCode::NoProcess,
                    message: "m".into(),
                }),
                r#"{"op":"error","code":"no_process","message":"m"}"#,
            ),
        ];
        for (line, want) in samples {
            assert_eq!(String::from_utf8(line).unwrap(), format!("{want}\n"));
        }
    }

    #[test]
    fn requests_round_trip_and_unknown_codes_decode_as_other() {
        let r = SessionRequest::Exec(ExecSpec {
            argv: vec!["a".into(), "b c".into()],
            detach: true,
            ..Default::default()
        });
        let back: SessionRequest = serde_json::from_slice(&to_line(&r)).unwrap();
        assert_eq!(back, r);
        let e: SessionReply =
            serde_json::from_str(r#"{"op":"error","code":"quota","message":"m"}"#).unwrap();
        assert_eq!(
            e,
            SessionReply::Error {
                code: SessionErrorCode::Other,
                message: "m".into()
            }
        );
        assert!(serde_json::from_str::<SessionRequest>(r#"{"op":"nope"}"#).is_err());
        assert_eq!(
            decode_bytes(&encode_bytes(b"\x00\x01")).unwrap(),
            b"\x00\x01"
        );
    }
}
