//! The listener: one HTTP/1.1 server for the control plane and envd,
//! a reaper for sandboxes past their timeout, and a clean shutdown that
//! kills every sandbox it started.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::config::E2bConfig;
use crate::error::E2bError;
use crate::http::Resp;
use crate::sandboxes::{now, remove_session, session_spec, Sandboxes};

/// How often the reaper looks for sandboxes past their timeout.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// What every request handler sees.
#[derive(Debug)]
pub struct Ctx {
    pub cfg: E2bConfig,
    pub sandboxes: Sandboxes,
}

/// A bound, not yet serving, server.
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    cfg: E2bConfig,
}

impl Server {
    /// Binds `cfg.listen`.
    pub fn bind(cfg: E2bConfig) -> Result<Server, E2bError> {
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| E2bError::Listen {
                addr: cfg.listen,
                source,
            })?;
        Ok(Server { listener, cfg })
    }

    /// The address it listens on (the port chosen when `listen` had 0).
    pub fn local_addr(&self) -> Result<SocketAddr, E2bError> {
        self.listener
            .local_addr()
            .map_err(|source| E2bError::Listen {
                addr: self.cfg.listen,
                source,
            })
    }
}

/// Serves until SIGINT or SIGTERM, then kills its sandboxes.
pub fn serve(server: Server) -> Result<(), E2bError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nook-e2b")
        .enable_all()
        .build()
        .map_err(E2bError::Runtime)?;
    rt.block_on(run(server))
}

async fn run(server: Server) -> Result<(), E2bError> {
    let addr = server.cfg.listen;
    let listen_err = |source| E2bError::Listen { addr, source };
    server.listener.set_nonblocking(true).map_err(listen_err)?;
    let listener = tokio::net::TcpListener::from_std(server.listener).map_err(listen_err)?;
    let ctx = Arc::new(Ctx {
        cfg: server.cfg,
        sandboxes: Sandboxes::default(),
    });
    tokio::spawn(reaper(ctx.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(E2bError::Runtime)?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("e2b: connection ended: {e}");
            }
        });
    }
    tracing::info!("e2b: shutting down: killing every sandbox");
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for sb in c.sandboxes.all() {
            let _ = c.sandboxes.kill(&c.cfg, &sb.id);
        }
    })
    .await;
    Ok(())
}

async fn route(ctx: Arc<Ctx>, req: Request<Incoming>) -> Resp {
    if crate::envd::is_envd_path(req.uri().path()) {
        return crate::envd::handle(ctx, req).await;
    }
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    if key != Some(ctx.cfg.api_key.as_str()) {
        return crate::api::api_error(
            StatusCode::UNAUTHORIZED,
            "invalid or missing API key (X-API-Key)",
        );
    }
    crate::api::handle(ctx, req).await
}

/// Kills running sandboxes past their timeout.
async fn reaper(ctx: Arc<Ctx>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        for id in ctx.sandboxes.expired(now()) {
            tracing::info!("e2b: sandbox {id} reached its timeout: killing it");
            let c = ctx.clone();
            let _ = tokio::task::spawn_blocking(move || c.sandboxes.kill(&c.cfg, &id)).await;
        }
    }
}

/// Boots the base template once so that its template snapshot exists and
/// the first create restores instead of booting; returns how long it took.
pub fn warm_template(cfg: &E2bConfig) -> Result<Duration, E2bError> {
    let t0 = Instant::now();
    let image = cfg.template_image(crate::config::BASE_TEMPLATE)?;
    let name = format!("e2b-warm-{}", crate::sandboxes::random_hex(4));
    let r = nook_serve::start(&cfg.home, &session_spec(cfg, &name, &image), &cfg.exe);
    remove_session(cfg, &name);
    r.map_err(|source| E2bError::Session {
        op: "warm the template of",
        id: name,
        source,
    })?;
    Ok(t0.elapsed())
}
