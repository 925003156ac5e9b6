//! The MCP server: rmcp's [`ServerHandler`] over the tool registry, served
//! on stdio. Tool calls run on blocking threads; a client's cancellation
//! kills the call's command. When the client disconnects (end of stdin) or
//! the server gets SIGTERM, SIGINT or SIGHUP, the client's sandboxes are
//! destroyed. Logs go to stderr (stdout is the MCP channel).

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::cancel::Cancel;
use crate::config::McpConfig;
use crate::error::McpError;
use crate::registry::ToolRegistry;
use crate::tools::{registry, ToolContext};

/// The name the server gives in `initialize`.
pub const SERVER_NAME: &str = "nook";

/// What the server tells the agent in `initialize`.
pub const INSTRUCTIONS: &str = "nook runs commands in hardware-isolated Linux microVMs on this machine. \
Use `run` for a one-off shell command in a fresh VM. For work that spans several commands, call \
`sandbox_create`, then `sandbox_exec`, `file_write`, `file_read` and `file_list` with its sandbox_id, \
and `sandbox_destroy` when done (sandboxes also go when this client disconnects or after 15 idle \
minutes). A failing command is a normal result with its exit_code; a tool error's message says what \
to do next. Output is capped per call and `truncated` says when it was cut. The default image is a \
minimal busybox root: pass `image` (e.g. python:3.12-slim) for more. Guests have no network unless \
the user started `nook mcp --net`. To operate graphical programs, `desktop_create` makes a sandbox \
with an X display; `desktop_action` takes screenshots (image content) and sends mouse and keyboard \
actions in the computer-use vocabulary; `desktop_destroy` ends it.";

#[derive(Debug)]
struct Inner {
    ctx: ToolContext,
    tools: ToolRegistry<ToolContext>,
}

/// nook's MCP server.
#[derive(Debug, Clone)]
pub struct NookMcp {
    inner: Arc<Inner>,
}

impl NookMcp {
    pub fn new(cfg: McpConfig) -> NookMcp {
        NookMcp {
            inner: Arc::new(Inner {
                ctx: ToolContext::new(cfg),
                tools: registry(),
            }),
        }
    }

    pub fn context(&self) -> &ToolContext {
        &self.inner.ctx
    }
}

fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown tool `{name}`: see tools/list"), None)
}

impl ServerHandler for NookMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.inner.tools.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.tools.tool(name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if self.inner.tools.tool(&name).is_none() {
            return Err(unknown_tool(&name));
        }
        let args = request.arguments.unwrap_or_default();
        let cancel = Arc::new(Cancel::default());
        let (inner, c) = (self.inner.clone(), cancel.clone());
        let tool = name.clone();
        let mut task =
            tokio::task::spawn_blocking(move || inner.tools.call(&inner.ctx, &tool, args, &c));
        let joined = tokio::select! {
            r = &mut task => r,
            _ = context.ct.cancelled() => {
                tracing::info!("nook mcp: {name} cancelled by the client");
                cancel.fire();
                task.await
            }
        };
        match joined {
            Ok(Some(result)) => Ok(result.into()),
            Ok(None) => Err(unknown_tool(&name)),
            Err(e) => Err(ErrorData::internal_error(
                format!("tool `{name}` failed: {e}"),
                None,
            )),
        }
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP.
async fn stop_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

async fn serve(server: NookMcp) -> Result<(), McpError> {
    let signalled = stop_signal();
    tokio::pin!(signalled);
    let running = tokio::select! {
        r = server.serve(rmcp::transport::stdio()) => r.map_err(|e| McpError::Handshake(Box::new(e)))?,
        _ = &mut signalled => return Ok(()),
    };
    tokio::select! {
        quit = running.waiting() => tracing::info!("nook mcp: the client disconnected ({quit:?})"),
        // Dropping the running service cancels it.
        _ = &mut signalled => tracing::info!("nook mcp: stopping on a signal"),
    }
    Ok(())
}

/// Serves MCP on stdin/stdout until the client disconnects or a signal
/// comes; then destroys the sandboxes the client created.
pub fn serve_stdio(cfg: McpConfig) -> Result<(), McpError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nook-mcp")
        .enable_all()
        .build()
        .map_err(McpError::Runtime)?;
    let server = NookMcp::new(cfg);
    let inner = server.inner.clone();
    let result = rt.block_on(serve(server));
    inner.ctx.sandboxes.destroy_all();
    // A read of stdin may still be pending: do not wait for it.
    rt.shutdown_background();
    result
}
