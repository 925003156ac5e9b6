//! envd's `filesystem.Filesystem` service and its `/files` route over a
//! nook session's guest file operations.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use nook::{FileKind, FileStat};
use nook_serve::SessionClient;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::connect::{Code, RpcError};
use crate::envd::{http_error, session_error};
use crate::http::{channel_body, json as json_resp, query, response, Resp};
use crate::sandboxes::Sandbox;
use crate::server::Ctx;

pub use crate::watch::watch_dir;

/// Largest multipart upload, held in memory while parsed.
const MAX_MULTIPART: usize = 1024 * 1024 * 1024;
/// Chunks buffered between HTTP and the session for a file transfer.
const TRANSFER_DEPTH: usize = 8;
/// Deepest `ListDir`.
const MAX_DEPTH: u32 = 16;

/// A guest path: relative ones are taken from `/`.
pub fn guest_path(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn base_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn type_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        _ => "FILE_TYPE_UNSPECIFIED",
    }
}

/// `ls -l`-style permissions of `st`.
fn permissions(st: &FileStat) -> String {
    let mut s = String::with_capacity(10);
    s.push(match st.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (st.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The `EntryInfo` JSON of `st` at `path`.
pub fn entry_info(path: &str, st: &FileStat) -> Value {
    let mut v = json!({
        "name": base_name(path),
        "type": type_name(st.kind),
        "path": path,
        "size": st.size.to_string(),
        "mode": st.mode,
        "permissions": permissions(st),
        "owner": "root",
        "group": "root",
        "modifiedTime": crate::http::rfc3339(st.mtime),
    });
    if let Some(t) = &st.link_target {
        v["symlinkTarget"] = json!(t);
    }
    v
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FsRequest {
    path: String,
    depth: u32,
    source: String,
    destination: String,
    recursive: bool,
    watcher_id: String,
}

/// The unary filesystem RPCs.
pub async fn rpc(
    ctx: Arc<Ctx>,
    sb: Arc<Sandbox>,
    method: &str,
    body: Bytes,
) -> Result<Value, RpcError> {
    let body = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    let req: FsRequest = serde_json::from_slice(&body)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad request message: {e}")))?;
    match method {
        "CreateWatcher" => {
            return sb
                .watchers
                .create(
                    ctx.cfg.home.clone(),
                    sb.clone(),
                    guest_path(&req.path),
                    req.recursive,
                )
                .await
        }
        "GetWatcherEvents" => return sb.watchers.events(&req.watcher_id),
        "RemoveWatcher" => return sb.watchers.remove(&req.watcher_id),
        _ => {}
    }
    let home = ctx.cfg.home.clone();
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let c = sb.client(&home).map_err(session_error)?;
        blocking_rpc(&c, &method, req)
    })
    .await
    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
}

fn stat(c: &SessionClient, path: &str) -> Result<Value, RpcError> {
    let st = c.stat(path).map_err(session_error)?;
    Ok(entry_info(path, &st))
}

fn blocking_rpc(c: &SessionClient, method: &str, req: FsRequest) -> Result<Value, RpcError> {
    let path = guest_path(&req.path);
    match method {
        "Stat" => Ok(json!({ "entry": stat(c, &path)? })),
        "MakeDir" => {
            if c.stat(&path).is_ok() {
                return Err(RpcError::new(
                    Code::AlreadyExists,
                    format!("{path} already exists"),
                ));
            }
            c.mkdir_all(&path, 0o755).map_err(session_error)?;
            Ok(json!({ "entry": stat(c, &path)? }))
        }
        "Remove" => {
            c.remove(&path, true).map_err(session_error)?;
            Ok(json!({}))
        }
        "ListDir" => {
            let mut entries = Vec::new();
            list_into(c, &path, req.depth.clamp(1, MAX_DEPTH), &mut entries)?;
            Ok(json!({ "entries": entries }))
        }
        "Move" => {
            let (src, dst) = (guest_path(&req.source), guest_path(&req.destination));
            move_path(c, &src, &dst)?;
            Ok(json!({ "entry": stat(c, &dst)? }))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("{method} is not implemented"),
        )),
    }
}

/// Entries of `dir`, `depth` levels down.
fn list_into(
    c: &SessionClient,
    dir: &str,
    depth: u32,
    out: &mut Vec<Value>,
) -> Result<(), RpcError> {
    let st = c.stat(dir).map_err(session_error)?;
    if st.kind != FileKind::Dir {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("{dir} is not a directory"),
        ));
    }
    let (entries, _) = c.list(dir).map_err(session_error)?;
    for e in entries {
        let path = if dir == "/" {
            format!("/{}", e.name)
        } else {
            format!("{dir}/{}", e.name)
        };
        out.push(entry_info(&path, &e));
        if depth > 1 && e.kind == FileKind::Dir {
            list_into(c, &path, depth - 1, out)?;
        }
    }
    Ok(())
}

/// `mv SRC DST` in the guest.
fn move_path(c: &SessionClient, src: &str, dst: &str) -> Result<(), RpcError> {
    c.stat(src).map_err(session_error)?;
    let spec = nook_serve::wire::ExecSpec {
        argv: vec![
            "mv".into(),
            "-f".into(),
            "--".into(),
            src.into(),
            dst.into(),
        ],
        ..Default::default()
    };
    let mut r = c.exec(spec).map_err(session_error)?;
    let mut err = Vec::new();
    loop {
        match r.next_reply().map_err(session_error)? {
            Some(nook_serve::wire::SessionReply::Stderr { data }) => {
                err.extend(nook_serve::wire::decode_bytes(&data).unwrap_or_default())
            }
            Some(nook_serve::wire::SessionReply::Exit { code: Some(0), .. }) => return Ok(()),
            Some(nook_serve::wire::SessionReply::Exit { .. }) | None => {
                return Err(RpcError::new(
                    Code::Internal,
                    format!(
                        "cannot move {src} to {dst}: {}",
                        String::from_utf8_lossy(&err).trim()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
}

/// A `Write` that sends what is written into a bounded channel.
struct ChannelWriter(mpsc::Sender<Bytes>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` of the chunks that come through a bounded channel.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// `GET`/`POST /files`.
pub async fn files(ctx: Arc<Ctx>, sb: Arc<Sandbox>, req: Request<Incoming>) -> Resp {
    let q = query(req.uri().query());
    let home = ctx.cfg.home.clone();
    let client = match tokio::task::spawn_blocking({
        let sb = sb.clone();
        move || sb.client(&home)
    })
    .await
    {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return rpc_http_error(session_error(e)),
        Err(e) => return http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match *req.method() {
        Method::GET => download(client, q.get("path").map(String::as_str)).await,
        Method::POST => upload(client, q.get("path").cloned(), req).await,
        _ => http_error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
    }
}

fn rpc_http_error(e: RpcError) -> Resp {
    http_error(e.code.http_status(), e.message)
}

async fn download(c: Arc<SessionClient>, path: Option<&str>) -> Resp {
    let Some(path) = path.map(guest_path) else {
        return http_error(StatusCode::BAD_REQUEST, "no path");
    };
    let p = path.clone();
    let c2 = c.clone();
    match tokio::task::spawn_blocking(move || c2.stat(&p)).await {
        Ok(Ok(st)) if st.kind == FileKind::Dir => {
            return http_error(StatusCode::BAD_REQUEST, format!("{path} is a directory"))
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return rpc_http_error(session_error(e)),
        Err(e) => return http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let (tx, body) = channel_body(TRANSFER_DEPTH);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = c.read_to(&path, &mut ChannelWriter(tx), None) {
            tracing::debug!("e2b: download of {path} ended early: {e}");
        }
    });
    response(StatusCode::OK, "application/octet-stream", body)
}

/// What was written, as envd lists it.
fn write_info(path: &str) -> Value {
    json!({ "name": base_name(path), "type": "file", "path": path })
}

fn write_file(c: &SessionClient, path: &str, src: &mut dyn Read) -> Result<Value, RpcError> {
    c.mkdir_all(parent(path), 0o755).map_err(session_error)?;
    c.write_from(path, 0o644, src).map_err(session_error)?;
    Ok(write_info(path))
}

async fn upload(c: Arc<SessionClient>, path: Option<String>, req: Request<Incoming>) -> Resp {
    let ct = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if let Some(boundary) = crate::multipart::boundary(&ct) {
        let body = match Limited::new(req.into_body(), MAX_MULTIPART).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return http_error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        };
        let parts = match crate::multipart::parse(&body, &boundary) {
            Ok(p) => p,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, e),
        };
        let single = parts.len() == 1;
        let result = tokio::task::spawn_blocking(move || {
            let mut written = Vec::new();
            for part in parts {
                let target = match (&part.filename, &path) {
                    (_, Some(p)) if single => p.clone(),
                    (Some(f), _) if !f.is_empty() => f.clone(),
                    (_, Some(p)) => p.clone(),
                    _ => return Err(RpcError::new(Code::InvalidArgument, "a part names no path")),
                };
                let data = &body[part.data.clone()];
                written.push(write_file(&c, &guest_path(&target), &mut &data[..])?);
            }
            Ok(written)
        })
        .await;
        return finish_upload(result);
    }
    let Some(path) = path.map(|p| guest_path(&p)) else {
        return http_error(StatusCode::BAD_REQUEST, "no path");
    };
    let (tx, rx) = mpsc::channel(TRANSFER_DEPTH);
    let writer = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        if gzip {
            write_file(&c, &path, &mut flate2::read::GzDecoder::new(reader)).map(|v| vec![v])
        } else {
            write_file(&c, &path, &mut reader).map(|v| vec![v])
        }
    });
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let item = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    finish_upload(writer.await)
}

fn finish_upload(r: Result<Result<Vec<Value>, RpcError>, tokio::task::JoinError>) -> Resp {
    match r {
        Ok(Ok(v)) => json_resp(StatusCode::OK, &v),
        Ok(Err(e)) => rpc_http_error(e),
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Guest directory `dir`'s entries, `recursive`ly, as (relative path, stat).
pub fn snapshot_tree(
    c: &SessionClient,
    dir: &str,
    recursive: bool,
) -> Result<Vec<(String, FileStat)>, RpcError> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_string(), String::new())];
    while let Some((abs, rel)) = todo.pop() {
        let (entries, _) = c.list(&abs).map_err(session_error)?;
        for e in entries {
            let r = if rel.is_empty() {
                e.name.clone()
            } else {
                format!("{rel}/{}", e.name)
            };
            if recursive && e.kind == FileKind::Dir && out.len() < 10_000 {
                todo.push((
                    Path::new(&abs).join(&e.name).to_string_lossy().into_owned(),
                    r.clone(),
                ));
            }
            out.push((r, e));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_info_is_envd_json() {
        let st = FileStat {
            name: "a.txt".into(),
            kind: FileKind::File,
            size: 5,
            mode: 0o644,
            mtime: 0,
            link_target: None,
        };
        let v = entry_info("/tmp/a.txt", &st);
        assert_eq!(v["name"], "a.txt");
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "5");
        assert_eq!(v["permissions"], "-rw-r--r--");
        assert_eq!(v["modifiedTime"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn paths_resolve_from_the_root() {
        assert_eq!(guest_path("a/b"), "/a/b");
        assert_eq!(guest_path("/x"), "/x");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(base_name("/a/b"), "b");
    }
}
