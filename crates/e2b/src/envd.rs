//! envd's routes, for the sandbox named by the `E2b-Sandbox-Id` header and
//! checked against its `X-Access-Token`: `process.Process` and
//! `filesystem.Filesystem` over Connect, `/files`, `/health`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use nook_serve::wire::SessionErrorCode;
use nook_serve::SessionError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::connect::{end_stream, envelope, Code, EnvelopeReader, RpcError, STREAM_CONTENT_TYPE};
use crate::http::{channel_body, empty, full, json, response, Resp};
use crate::sandboxes::{Sandbox, SandboxPhase};
use crate::server::Ctx;
use crate::{filesystem, process};

/// The envd version this server reports: the highest whose features the
/// SDK uses that are implemented (stdin control, default user, closing
/// stdin, octet-stream and gzip uploads).
pub const ENVD_VERSION: &str = "0.5.7";
/// Largest unary request body.
const MAX_UNARY: usize = 16 * 1024 * 1024;
/// Stream envelopes buffered towards a client.
const STREAM_DEPTH: usize = 16;

/// Whether `path` is one of envd's routes.
pub fn is_envd_path(path: &str) -> bool {
    path == "/health"
        || path == "/files"
        || path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
}

/// The Connect error of a failed session operation.
pub fn session_error(e: SessionError) -> RpcError {
    let code = match &e {
        SessionError::Refused { code, .. } => match code {
            SessionErrorCode::NotFound => Code::NotFound,
            SessionErrorCode::NotADirectory
            | SessionErrorCode::IsADirectory
            | SessionErrorCode::BadRequest
            | SessionErrorCode::NotExecutable => Code::InvalidArgument,
            SessionErrorCode::PermissionDenied => Code::PermissionDenied,
            SessionErrorCode::NotEmpty => Code::FailedPrecondition,
            _ => Code::Internal,
        },
        SessionError::NotRunning(_) | SessionError::NoSuchSession(_) => Code::Unavailable,
        SessionError::Connection(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    RpcError::new(code, nook::error_chain(&e))
}

/// A server-streaming call in progress: where its envelopes go and what
/// the client asked of it.
#[derive(Debug)]
pub struct StreamCall {
    pub tx: mpsc::Sender<Bytes>,
    /// `Connect-Timeout-Ms`.
    pub timeout_ms: Option<u64>,
    /// `Keepalive-Ping-Interval` (seconds).
    pub keepalive: Option<Duration>,
}

impl StreamCall {
    /// Ends the stream with `e`.
    pub async fn fail(self, e: RpcError) {
        let _ = self.tx.send(end_stream(Some(&e))).await;
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A plain HTTP error as envd's HTTP routes answer them.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(
        status,
        &serde_json::json!({ "code": status.as_u16(), "message": message.into() }),
    )
}

fn unary_reply<T: Serialize>(r: Result<T, RpcError>) -> Resp {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => json(e.code.http_status(), &e.to_json()),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RpcError> {
    let bytes = if bytes.is_empty() { &b"{}"[..] } else { bytes };
    serde_json::from_slice(bytes)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad request message: {e}")))
}

async fn body_bytes(body: Incoming, max: usize) -> Result<Bytes, RpcError> {
    Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| RpcError::new(Code::ResourceExhausted, format!("request body: {e}")))
}

/// Serves one envd request.
pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Resp {
    let Some(id) = header(req.headers(), "e2b-sandbox-id").map(str::to_string) else {
        return http_error(StatusCode::BAD_REQUEST, "no E2b-Sandbox-Id header");
    };
    let Some(sb) = ctx.sandboxes.get(&id) else {
        return http_error(StatusCode::NOT_FOUND, format!("sandbox {id} not found"));
    };
    if header(req.headers(), "x-access-token") != Some(sb.access_token.as_str()) {
        return http_error(StatusCode::UNAUTHORIZED, "wrong or missing X-Access-Token");
    }
    if sb.life().phase == SandboxPhase::Paused {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("sandbox {id} is paused: connect to resume it"),
        );
    }
    let path = req.uri().path().to_string();
    if path == "/health" {
        return empty(StatusCode::NO_CONTENT);
    }
    if path == "/files" {
        return filesystem::files(ctx, sb, req).await;
    }
    if req.method() != Method::POST {
        return http_error(StatusCode::METHOD_NOT_ALLOWED, "RPCs are POSTed");
    }
    let method = path.rsplit('/').next().unwrap_or("").to_string();
    if path.starts_with("/process.Process/") {
        process_rpc(ctx, sb, &method, req).await
    } else {
        filesystem_rpc(ctx, sb, &method, req).await
    }
}

/// Starts a server-streaming response fed by `run`.
async fn server_stream<T, F, Fut>(req: Request<Incoming>, run: F) -> Resp
where
    T: DeserializeOwned,
    F: FnOnce(StreamCall, T) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, body) = channel_body(STREAM_DEPTH);
    let h = req.headers();
    let timeout_ms = header(h, "connect-timeout-ms").and_then(|v| v.parse().ok());
    let keepalive = header(h, "keepalive-ping-interval")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.clamp(1, 3600)));
    let call = StreamCall {
        tx,
        timeout_ms,
        keepalive,
    };
    let msg = match body_bytes(req.into_body(), MAX_UNARY).await {
        Ok(b) => first_envelope::<T>(&b),
        Err(e) => Err(e),
    };
    match msg {
        Ok(m) => {
            tokio::spawn(run(call, m));
        }
        Err(e) => {
            tokio::spawn(call.fail(e));
        }
    }
    response(StatusCode::OK, STREAM_CONTENT_TYPE, body)
}

fn first_envelope<T: DeserializeOwned>(b: &[u8]) -> Result<T, RpcError> {
    let mut r = EnvelopeReader::default();
    r.push(b);
    match r.next()? {
        Some((_, msg)) => decode(&msg),
        None => Err(RpcError::new(Code::InvalidArgument, "no request envelope")),
    }
}

async fn unary<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, RpcError> {
    decode(&body_bytes(req.into_body(), MAX_UNARY).await?)
}

async fn process_rpc(
    ctx: Arc<Ctx>,
    sb: Arc<Sandbox>,
    method: &str,
    req: Request<Incoming>,
) -> Resp {
    process_call(ctx, sb, method, req)
        .await
        .unwrap_or_else(|e| unary_reply::<()>(Err(e)))
}

/// A process RPC; `Err` is a request that could not be decoded.
async fn process_call(
    ctx: Arc<Ctx>,
    sb: Arc<Sandbox>,
    method: &str,
    req: Request<Incoming>,
) -> Result<Resp, RpcError> {
    let home = ctx.cfg.home.clone();
    Ok(match method {
        "Start" => server_stream(req, move |c, m| process::start(c, home, sb, m)).await,
        "Connect" => server_stream(req, move |c, m| process::connect(c, sb, m)).await,
        "List" => unary_reply(Ok(process::list(&sb))),
        "SendInput" => unary_reply(process::send_input(&sb, unary(req).await?).await),
        "CloseStdin" => unary_reply(process::close_stdin(&sb, unary(req).await?).await),
        "SendSignal" => unary_reply(process::send_signal(&sb, unary(req).await?).await),
        "Update" => unary_reply(process::update(&sb, unary(req).await?).await),
        "StreamInput" => stream_input(sb, req).await,
        _ => unimplemented(method),
    })
}

fn unimplemented(method: &str) -> Resp {
    unary_reply::<()>(Err(RpcError::new(
        Code::Unimplemented,
        format!("{method} is not implemented by nook"),
    )))
}

/// `StreamInput`: a client stream; answered with one message and the end.
async fn stream_input(sb: Arc<Sandbox>, req: Request<Incoming>) -> Resp {
    let (msg_tx, msg_rx) = mpsc::channel(STREAM_DEPTH);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut r = EnvelopeReader::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            r.push(data);
            loop {
                let m = match r.next() {
                    Ok(Some((_, msg))) => decode::<process::StreamInputRequest>(&msg),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let failed = m.is_err();
                if msg_tx.send(m).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    let result = process::stream_input(&sb, msg_rx).await;
    let mut out = Vec::new();
    match result {
        Ok(v) => {
            out.extend_from_slice(&envelope(&v));
            out.extend_from_slice(&end_stream(None));
        }
        Err(e) => out.extend_from_slice(&end_stream(Some(&e))),
    }
    response(StatusCode::OK, STREAM_CONTENT_TYPE, full(out))
}

async fn filesystem_rpc(
    ctx: Arc<Ctx>,
    sb: Arc<Sandbox>,
    method: &str,
    req: Request<Incoming>,
) -> Resp {
    let home = ctx.cfg.home.clone();
    match method {
        "WatchDir" => server_stream(req, move |c, m| filesystem::watch_dir(c, home, sb, m)).await,
        "Stat" | "MakeDir" | "Move" | "ListDir" | "Remove" | "CreateWatcher"
        | "GetWatcherEvents" | "RemoveWatcher" => {
            let body = match body_bytes(req.into_body(), MAX_UNARY).await {
                Ok(b) => b,
                Err(e) => return unary_reply::<()>(Err(e)),
            };
            unary_reply(filesystem::rpc(ctx, sb, method, body).await)
        }
        _ => unimplemented(method),
    }
}
