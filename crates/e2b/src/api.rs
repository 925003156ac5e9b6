//! The E2B control plane: create, list, inspect, kill sandboxes, their
//! timeouts, pause and resume. Every call carries the API key
//! (`X-API-Key`); errors are `{"code","message"}` with the HTTP status.

use std::collections::BTreeMap;
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::DEFAULT_TIMEOUT_S;
use crate::envd::ENVD_VERSION;
use crate::error::E2bError;
use crate::http::{empty, json as json_resp, query, rfc3339, Resp};
use crate::sandboxes::{now, CreateRequest, Sandbox, SandboxPhase};
use crate::server::Ctx;

/// Longest sandbox lifetime a create or set_timeout may ask for (E2B's
/// own cap for its paid tier: 24 h).
const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// Sandboxes per list page without `limit`.
const DEFAULT_PAGE: usize = 100;

/// A control-plane error reply.
pub fn api_error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_resp(
        status,
        &json!({ "code": status.as_u16(), "message": message.into() }),
    )
}

/// A failed control-plane call: its status and message.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }

    fn into_resp(self) -> Resp {
        api_error(self.0, self.1)
    }
}

fn from_error(e: &E2bError) -> ApiError {
    let status = match e {
        E2bError::NoSandbox(_) => StatusCode::NOT_FOUND,
        E2bError::NoTemplate { .. } => StatusCode::NOT_FOUND,
        E2bError::AlreadyPaused(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, nook::error_chain(e))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TimeoutBody {
    timeout: Option<u64>,
}

fn check_timeout(t: u64) -> Result<u64, ApiError> {
    if t == 0 || t > MAX_TIMEOUT_S {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("timeout must be 1 to {MAX_TIMEOUT_S} seconds, not {t}"),
        ))
    } else {
        Ok(t)
    }
}

/// The `Sandbox` answer of a create or connect.
fn created(sb: &Sandbox) -> Value {
    json!({
        "templateID": sb.template,
        "sandboxID": sb.id,
        "clientID": "nook",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sb.access_token,
        "domain": null,
    })
}

/// The `SandboxDetail` / `ListedSandbox` answer.
fn detail(sb: &Sandbox) -> Value {
    let life = sb.life();
    json!({
        "templateID": sb.template,
        "alias": sb.template,
        "sandboxID": sb.id,
        "clientID": "nook",
        "startedAt": rfc3339(sb.started_unix),
        "endAt": rfc3339(life.end_unix),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sb.access_token,
        "cpuCount": sb.vcpus,
        "memoryMB": sb.memory_mib,
        "diskSizeMB": 0,
        "state": life.phase.as_str(),
        "metadata": sb.metadata,
    })
}

async fn body_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// Runs blocking sandbox work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, E2bError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(from_error(&e)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// Serves one control-plane request (the key is already checked).
pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let r = match (req.method().clone(), segs.as_slice()) {
        (Method::POST, ["v2", "sandboxes"]) | (Method::POST, ["sandboxes"]) => {
            create(ctx, req).await
        }
        (Method::GET, ["v2", "sandboxes"]) | (Method::GET, ["sandboxes"]) => Ok(list(&ctx, &req)),
        (Method::GET, ["sandboxes", id]) => get(&ctx, id),
        (Method::DELETE, ["sandboxes", id]) => kill(ctx.clone(), id.to_string()).await,
        (Method::POST, ["sandboxes", id, "timeout"]) => {
            set_timeout(ctx.clone(), id.to_string(), req).await
        }
        (Method::POST, ["sandboxes", id, "pause"]) => pause(ctx.clone(), id.to_string()).await,
        (Method::POST, ["v2", "sandboxes", id, "connect"])
        | (Method::POST, ["sandboxes", id, "resume"]) => {
            connect(ctx.clone(), id.to_string(), req).await
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} {path} is not a route nook serves", req.method()),
        )),
    };
    r.unwrap_or_else(ApiError::into_resp)
}

async fn create(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body: NewSandbox = body_json(req).await?;
    if body.template_id.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "templateID is required",
        ));
    }
    let timeout_s = check_timeout(body.timeout.unwrap_or(DEFAULT_TIMEOUT_S))?;
    let cr = CreateRequest {
        template: body.template_id,
        timeout_s,
        metadata: body.metadata.unwrap_or_default(),
        env_vars: body.env_vars.unwrap_or_default(),
    };
    let c = ctx.clone();
    let sb = blocking(move || c.sandboxes.create(&c.cfg, cr)).await?;
    Ok(json_resp(StatusCode::CREATED, &created(&sb)))
}

/// Whether `sb` matches the `state` and `metadata` filters.
fn matches(sb: &Sandbox, states: &Option<Vec<String>>, meta: &[(String, String)]) -> bool {
    let phase = sb.life().phase.as_str();
    states.as_ref().is_none_or(|s| s.iter().any(|x| x == phase))
        && meta.iter().all(|(k, v)| sb.metadata.get(k) == Some(v))
}

fn list(ctx: &Ctx, req: &Request<Incoming>) -> Resp {
    let q = query(req.uri().query());
    let states = q
        .get("state")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    // `metadata` is itself a query string (`k=v&k2=v2`), escaped once more.
    let meta: Vec<(String, String)> = q
        .get("metadata")
        .map(|m| form_urlencoded::parse(m.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let meta: Vec<(String, String)> = meta
        .into_iter()
        .map(|(k, v)| {
            let un = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (un(&k), un(&v))
        })
        .collect();
    let mut all: Vec<Arc<Sandbox>> = ctx
        .sandboxes
        .all()
        .into_iter()
        .filter(|s| matches(s, &states, &meta))
        .collect();
    if q.get("order").map(String::as_str) == Some("desc") {
        all.reverse();
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(DEFAULT_PAGE);
    let start = q
        .get("nextToken")
        .and_then(|t| all.iter().position(|s| &s.id == t))
        .unwrap_or(0);
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| detail(s))
        .collect();
    let mut r = json_resp(StatusCode::OK, &page);
    if let Some(next) = all.get(start + limit) {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&next.id) {
            r.headers_mut().insert("x-next-token", v);
        }
    }
    r
}

fn find(ctx: &Ctx, id: &str) -> Result<Arc<Sandbox>, ApiError> {
    ctx.sandboxes
        .get(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found")))
}

fn get(ctx: &Ctx, id: &str) -> Result<Resp, ApiError> {
    Ok(json_resp(StatusCode::OK, &detail(find(ctx, id)?.as_ref())))
}

async fn kill(ctx: Arc<Ctx>, id: String) -> Result<Resp, ApiError> {
    find(&ctx, &id)?;
    blocking(move || ctx.sandboxes.kill(&ctx.cfg, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn set_timeout(ctx: Arc<Ctx>, id: String, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let sb = find(&ctx, &id)?;
    let body: TimeoutBody = body_json(req).await?;
    let t = check_timeout(body.timeout.unwrap_or(DEFAULT_TIMEOUT_S))?;
    let mut life = sb.life();
    if life.phase == SandboxPhase::Running {
        life.end_unix = now() + t as i64;
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn pause(ctx: Arc<Ctx>, id: String) -> Result<Resp, ApiError> {
    find(&ctx, &id)?;
    blocking(move || ctx.sandboxes.pause(&ctx.cfg, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn connect(ctx: Arc<Ctx>, id: String, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let sb = find(&ctx, &id)?;
    let body: TimeoutBody = body_json(req).await?;
    let t = check_timeout(body.timeout.unwrap_or(DEFAULT_TIMEOUT_S))?;
    let was_paused = sb.life().phase == SandboxPhase::Paused;
    if was_paused {
        let c = ctx.clone();
        let id2 = id.clone();
        blocking(move || c.sandboxes.resume(&c.cfg, &id2)).await?;
    }
    {
        let mut life = sb.life();
        life.end_unix = life.end_unix.max(now() + t as i64);
    }
    let status = if was_paused {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_resp(status, &created(&sb)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_outside_the_range_are_refused() {
        assert!(check_timeout(0).is_err());
        assert!(check_timeout(MAX_TIMEOUT_S + 1).is_err());
        assert_eq!(check_timeout(300).ok(), Some(300));
    }
}
