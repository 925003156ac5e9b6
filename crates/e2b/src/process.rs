//! envd's `process.Process` service over a nook session: each started
//! process is an attached exec of the session; a relay thread turns its
//! output into events that every stream watching it (`Start`, `Connect`)
//! receives; stdin, signals and resizes go to the exec's input.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use nook_serve::wire::{ExecSpec, SessionReply};
use nook_serve::{ExecInputSender, RemoteExec};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::connect::{end_stream, envelope, Code, RpcError};
use crate::envd::{session_error, StreamCall};
use crate::sandboxes::Sandbox;

/// Events a process's relay keeps for slow watchers before they lag.
const EVENT_BACKLOG: usize = 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, RpcError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad base64 bytes: {e}")))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pty {
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    pub process: Option<ProcessConfig>,
    pub pty: Option<Pty>,
    pub tag: Option<String>,
    pub stdin: Option<bool>,
}

/// `ProcessSelector`: a pid or a tag.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Selector {
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SelectorRequest {
    pub process: Option<Selector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessInput {
    pub stdin: Option<String>,
    pub pty: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    pub process: Option<Selector>,
    pub input: Option<ProcessInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    pub process: Option<Selector>,
    /// `"SIGNAL_SIGKILL"`, `"SIGNAL_SIGTERM"` or their numbers.
    pub signal: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    pub process: Option<Selector>,
    pub pty: Option<Pty>,
}

/// One `StreamInput` message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamInputRequest {
    pub start: Option<SelectorRequest>,
    pub data: Option<StreamInputData>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamInputData {
    pub input: Option<ProcessInput>,
}

/// What a process's relay reports.
#[derive(Debug, Clone)]
pub enum ProcEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Pty(Bytes),
    End {
        exit_code: i32,
        exited: bool,
        status: String,
    },
    Failed(RpcError),
}

impl ProcEvent {
    /// The `ProcessEvent` JSON of this event (`None` for a failure).
    fn to_json(&self) -> Option<Value> {
        let data = |field: &str, b: &Bytes| json!({ "data": { field: b64(b) } });
        Some(match self {
            ProcEvent::Stdout(b) => data("stdout", b),
            ProcEvent::Stderr(b) => data("stderr", b),
            ProcEvent::Pty(b) => data("pty", b),
            ProcEvent::End {
                exit_code,
                exited,
                status,
            } => json!({ "end": { "exitCode": exit_code, "exited": exited, "status": status } }),
            ProcEvent::Failed(_) => return None,
        })
    }
}

/// A process started through envd.
#[derive(Debug)]
pub struct ProcEntry {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    pub pty: bool,
    input: Mutex<ExecInputSender>,
    events: broadcast::Sender<ProcEvent>,
}

/// A sandbox's envd processes by pid.
#[derive(Debug, Default, Clone)]
pub struct ProcTable(Arc<Mutex<HashMap<u32, Arc<ProcEntry>>>>);

impl ProcTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<ProcEntry>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every process (their sandbox is going).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn find(&self, sel: Option<&Selector>) -> Result<Arc<ProcEntry>, RpcError> {
        let t = self.lock();
        let found = match sel {
            Some(Selector { pid: Some(pid), .. }) => t.get(pid).cloned(),
            Some(Selector { tag: Some(tag), .. }) => {
                t.values().find(|p| p.tag.as_deref() == Some(tag)).cloned()
            }
            _ => return Err(RpcError::new(Code::InvalidArgument, "no process selector")),
        };
        found.ok_or_else(|| RpcError::new(Code::NotFound, "process not found"))
    }
}

/// What the exit of a command reports.
fn end_event(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> ProcEvent {
    if timed_out {
        return ProcEvent::Failed(RpcError::new(
            Code::DeadlineExceeded,
            "the command ran past its timeout and was killed",
        ));
    }
    match (code, signal) {
        (Some(c), _) => ProcEvent::End {
            exit_code: c,
            exited: true,
            status: format!("exit status {c}"),
        },
        (None, Some(s)) => ProcEvent::End {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(s)),
        },
        (None, None) => ProcEvent::End {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
        },
    }
}

fn signal_name(s: i32) -> String {
    match s {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        n => format!("signal {n}"),
    }
}

/// Relays `rexec`'s output into `events` until it ends; then forgets it.
fn relay(mut rexec: RemoteExec, pty: bool, events: broadcast::Sender<ProcEvent>, table: ProcTable) {
    let pid = rexec.pid;
    let decode = |d: &str| Bytes::from(unb64(d).unwrap_or_default());
    loop {
        let ev = match rexec.next_reply() {
            Ok(Some(SessionReply::Stdout { data })) if pty => ProcEvent::Pty(decode(&data)),
            Ok(Some(SessionReply::Stdout { data })) => ProcEvent::Stdout(decode(&data)),
            Ok(Some(SessionReply::Stderr { data })) => ProcEvent::Stderr(decode(&data)),
            Ok(Some(SessionReply::Exit {
                code,
                signal,
                timed_out,
            })) => end_event(code, signal, timed_out),
            Ok(Some(SessionReply::Error { message, .. })) => {
                ProcEvent::Failed(RpcError::new(Code::Internal, message))
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => ProcEvent::Failed(RpcError::new(
                Code::Unavailable,
                "the sandbox ended before the process did",
            )),
        };
        let last = matches!(ev, ProcEvent::End { .. } | ProcEvent::Failed(_));
        let _ = events.send(ev);
        if last {
            break;
        }
    }
    table.lock().remove(&pid);
}

/// The `ExecSpec` of a `Start`.
fn exec_spec(sb: &Sandbox, req: &StartRequest, timeout_ms: Option<u64>) -> ExecSpec {
    let cfg = req.process.clone().unwrap_or_default();
    let mut env: BTreeMap<String, String> = sb.env_vars.clone();
    env.extend(cfg.envs.clone());
    let tty = req.pty.as_ref().map(|p| {
        let s = p.size.unwrap_or(PtySize { cols: 80, rows: 24 });
        nook::Winsize {
            rows: s.rows.max(1),
            cols: s.cols.max(1),
        }
    });
    if tty.is_some() {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }
    let mut argv = vec![cfg.cmd.clone()];
    argv.extend(cfg.args.iter().cloned());
    ExecSpec {
        argv,
        env: env.into_iter().collect(),
        cwd: cfg.cwd.filter(|c| !c.is_empty()),
        user: None,
        tty,
        stdin: true,
        detach: false,
        timeout_ms,
        service: false,
    }
}

/// `Start`: runs the command, then streams its events.
pub async fn start(
    call: StreamCall,
    home: std::path::PathBuf,
    sb: Arc<Sandbox>,
    req: StartRequest,
) {
    if req.process.as_ref().is_none_or(|p| p.cmd.is_empty()) {
        return call
            .fail(RpcError::new(Code::InvalidArgument, "no command"))
            .await;
    }
    let spec = exec_spec(&sb, &req, call.timeout_ms);
    let pty = spec.tty.is_some();
    let sb2 = sb.clone();
    let started = tokio::task::spawn_blocking(move || {
        let client = sb2.client(&home).map_err(session_error)?;
        client.exec(spec).map_err(session_error)
    })
    .await;
    let rexec = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return call.fail(e).await,
        Err(e) => {
            return call
                .fail(RpcError::new(Code::Internal, e.to_string()))
                .await
        }
    };
    let (events, rx) = broadcast::channel(EVENT_BACKLOG);
    let input = match rexec.input.try_clone() {
        Ok(i) => i,
        Err(e) => {
            return call
                .fail(RpcError::new(Code::Internal, e.to_string()))
                .await
        }
    };
    let entry = Arc::new(ProcEntry {
        pid: rexec.pid,
        tag: req.tag.clone(),
        config: req.process.clone().unwrap_or_default(),
        pty,
        input: Mutex::new(input),
        events: events.clone(),
    });
    sb.procs.lock().insert(entry.pid, entry.clone());
    let table = sb.procs.clone();
    let spawned = std::thread::Builder::new()
        .name("nook-e2b-proc".into())
        .spawn(move || relay(rexec, pty, events, table));
    if let Err(e) = spawned {
        sb.procs.lock().remove(&entry.pid);
        return call
            .fail(RpcError::new(Code::Internal, e.to_string()))
            .await;
    }
    watch(call, entry.pid, rx).await;
}

/// `Connect`: streams the events of a running process from now on.
pub async fn connect(call: StreamCall, sb: Arc<Sandbox>, req: SelectorRequest) {
    match sb.procs.find(req.process.as_ref()) {
        Ok(p) => {
            let rx = p.events.subscribe();
            watch(call, p.pid, rx).await
        }
        Err(e) => call.fail(e).await,
    }
}

/// Sends the start event, then every event of `rx` (with keepalives
/// while it is quiet) until the process ends or the client goes.
async fn watch(call: StreamCall, pid: u32, mut rx: broadcast::Receiver<ProcEvent>) {
    let tx = call.tx.clone();
    if tx
        .send(envelope(&json!({ "event": { "start": { "pid": pid } } })))
        .await
        .is_err()
    {
        return;
    }
    let keepalive = call.keepalive.unwrap_or(Duration::from_secs(3600));
    loop {
        let ev = match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => {
                if tx
                    .send(envelope(&json!({ "event": { "keepalive": {} } })))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(Ok(ev)) => ev,
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => ProcEvent::Failed(RpcError::new(
                Code::ResourceExhausted,
                format!("the client read too slowly: {n} output events were dropped"),
            )),
            Ok(Err(broadcast::error::RecvError::Closed)) => ProcEvent::Failed(RpcError::new(
                Code::Unavailable,
                "the process's output ended",
            )),
        };
        match ev.to_json() {
            Some(v) => {
                if tx.send(envelope(&json!({ "event": v }))).await.is_err() {
                    return;
                }
                if matches!(ev, ProcEvent::End { .. }) {
                    let _ = tx.send(end_stream(None)).await;
                    return;
                }
            }
            None => {
                if let ProcEvent::Failed(e) = ev {
                    let _ = tx.send(end_stream(Some(&e))).await;
                }
                return;
            }
        }
    }
}

/// `List`.
pub fn list(sb: &Sandbox) -> Value {
    let t = sb.procs.lock();
    let mut procs: Vec<&Arc<ProcEntry>> = t.values().collect();
    procs.sort_by_key(|p| p.pid);
    let processes: Vec<Value> = procs
        .iter()
        .map(|p| {
            let mut v = json!({
                "config": {
                    "cmd": p.config.cmd,
                    "args": p.config.args,
                    "envs": p.config.envs,
                },
                "pid": p.pid,
            });
            if let Some(cwd) = &p.config.cwd {
                v["config"]["cwd"] = json!(cwd);
            }
            if let Some(tag) = &p.tag {
                v["tag"] = json!(tag);
            }
            v
        })
        .collect();
    json!({ "processes": processes })
}

/// Runs `f` on the input of the selected process, off the async threads.
async fn with_input(
    sb: &Sandbox,
    sel: Option<&Selector>,
    f: impl FnOnce(&mut ExecInputSender, &ProcEntry) -> std::io::Result<()> + Send + 'static,
) -> Result<Value, RpcError> {
    let p = sb.procs.find(sel)?;
    tokio::task::spawn_blocking(move || {
        let mut input = p.input.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut input, &p)
    })
    .await
    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
    .map_err(|e| RpcError::new(Code::NotFound, format!("the process is gone: {e}")))?;
    Ok(json!({}))
}

/// The bytes of a `ProcessInput` (stdin or pty).
fn input_bytes(input: Option<&ProcessInput>) -> Result<Vec<u8>, RpcError> {
    match input {
        Some(ProcessInput { stdin: Some(d), .. }) | Some(ProcessInput { pty: Some(d), .. }) => {
            unb64(d)
        }
        _ => Ok(Vec::new()),
    }
}

/// `SendInput`.
pub async fn send_input(sb: &Sandbox, req: SendInputRequest) -> Result<Value, RpcError> {
    let bytes = input_bytes(req.input.as_ref())?;
    with_input(sb, req.process.as_ref(), move |i, _| i.stdin(&bytes)).await
}

/// `CloseStdin`.
pub async fn close_stdin(sb: &Sandbox, req: SelectorRequest) -> Result<Value, RpcError> {
    with_input(sb, req.process.as_ref(), |i, p| {
        if p.pty {
            return Err(std::io::Error::other(
                "a PTY's stdin cannot be closed: send Ctrl-D",
            ));
        }
        i.close_stdin()
    })
    .await
}

/// The signal number of a `Signal` enum value.
fn signal_number(v: &Value) -> Result<i32, RpcError> {
    let n = match v {
        Value::String(s) => match s.as_str() {
            "SIGNAL_SIGKILL" => 9,
            "SIGNAL_SIGTERM" => 15,
            _ => 0,
        },
        Value::Number(n) => n.as_i64().unwrap_or(0) as i32,
        _ => 0,
    };
    if n == 9 || n == 15 {
        Ok(n)
    } else {
        Err(RpcError::new(
            Code::InvalidArgument,
            format!("unsupported signal {v}: use SIGNAL_SIGKILL or SIGNAL_SIGTERM"),
        ))
    }
}

/// `SendSignal`.
pub async fn send_signal(sb: &Sandbox, req: SendSignalRequest) -> Result<Value, RpcError> {
    let n = signal_number(&req.signal)?;
    with_input(sb, req.process.as_ref(), move |i, _| i.signal(n)).await
}

/// `Update`: a PTY's new size.
pub async fn update(sb: &Sandbox, req: UpdateRequest) -> Result<Value, RpcError> {
    let size = req.pty.and_then(|p| p.size);
    with_input(sb, req.process.as_ref(), move |i, p| match size {
        Some(s) if p.pty => i.resize(s.rows.max(1), s.cols.max(1)),
        Some(_) => Err(std::io::Error::other("the process has no PTY")),
        None => Ok(()),
    })
    .await
}

/// `StreamInput`: a client stream of a start (the selector), then data.
pub async fn stream_input(
    sb: &Sandbox,
    mut msgs: mpsc::Receiver<Result<StreamInputRequest, RpcError>>,
) -> Result<Value, RpcError> {
    let mut sel: Option<Selector> = None;
    while let Some(m) = msgs.recv().await {
        let m = m?;
        if let Some(start) = m.start {
            sel = start.process;
        }
        if let Some(data) = m.data {
            let bytes = input_bytes(data.input.as_ref())?;
            with_input(sb, sel.as_ref(), move |i, _| i.stdin(&bytes)).await?;
        }
    }
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_end_events_as_envd_reports_them() {
        match end_event(Some(3), None, false) {
            ProcEvent::End {
                exit_code,
                exited,
                status,
            } => assert_eq!(
                (exit_code, exited, status.as_str()),
                (3, true, "exit status 3")
            ),
            other => panic!("{other:?}"),
        }
        match end_event(None, Some(9), false) {
            ProcEvent::End {
                exit_code, status, ..
            } => assert_eq!((exit_code, status.as_str()), (-1, "signal: killed")),
            other => panic!("{other:?}"),
        }
        match end_event(Some(137), None, true) {
            ProcEvent::Failed(e) => assert_eq!(e.code, Code::DeadlineExceeded),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_serialise_as_protobuf_json() {
        let v = ProcEvent::Stdout(Bytes::from_static(b"hi\n"))
            .to_json()
            .unwrap();
        assert_eq!(v, json!({"data": {"stdout": "aGkK"}}));
        let v = ProcEvent::End {
            exit_code: 1,
            exited: true,
            status: "exit status 1".into(),
        }
        .to_json()
        .unwrap();
        assert_eq!(v["end"]["exitCode"], 1);
    }

    #[test]
    fn signals_are_named_or_numbered() {
        assert_eq!(signal_number(&json!("SIGNAL_SIGKILL")).unwrap(), 9);
        assert_eq!(signal_number(&json!(15)).unwrap(), 15);
        assert_eq!(
            signal_number(&json!("SIGNAL_UNSPECIFIED"))
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn start_requests_parse_from_the_sdk_json() {
        let r: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"}},
            "stdin": false
        }))
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["A"], "1");
        assert_eq!(r.stdin, Some(false));
    }
}
