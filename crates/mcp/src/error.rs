//! Errors: [`ToolError`] is what a tool call reports to the agent (a
//! result with `isError`, its message saying what to do next);
//! [`McpError`] ends the server.

use nook_serve::SessionError;

/// A tool call that failed; the agent sees the message and its causes.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments for `{tool}`: {reason} (see the tool's input schema)")]
    Arguments { tool: String, reason: String },
    #[error("invalid `{field}`: {reason}")]
    Argument { field: &'static str, reason: String },
    #[error("unknown sandbox `{0}`: call sandbox_list to see the running sandboxes, or sandbox_create to make one")]
    UnknownSandbox(String),
    #[error("sandbox `{0}` is not running any more (it was stopped or expired after its idle timeout): create a new one with sandbox_create")]
    SandboxGone(String),
    #[error("sandbox `{0}` was not created by this MCP client: stop it with `nook stop {0}` on the host")]
    NotOwned(String),
    #[error("sharing host directories is not enabled: the user must start `nook mcp` with `--allow-share DIR`")]
    SharesDisabled,
    #[error("{op} in sandbox `{sandbox}` failed")]
    Session {
        op: &'static str,
        sandbox: String,
        #[source]
        source: Box<SessionError>,
    },
    #[error("cannot create a sandbox")]
    Create(#[source] Box<SessionError>),
    #[error("cannot find image `{reference}`")]
    Image {
        reference: String,
        #[source]
        source: Box<nook::ImageError>,
    },
    #[error("cannot start the VM")]
    Vm(#[source] Box<nook::VmError>),
    #[error("cannot run the command")]
    Exec(#[source] Box<nook::ExecError>),
    #[error("the command could not finish: {0}")]
    Ended(String),
    #[error("the call was cancelled")]
    Cancelled,
}

impl ToolError {
    /// A session operation `op` on `sandbox` failed: an unknown or stopped
    /// session says so in the agent's terms.
    pub fn session(op: &'static str, sandbox: &str, source: SessionError) -> ToolError {
        match source {
            SessionError::NoSuchSession(_) | SessionError::BadName(_) => {
                ToolError::UnknownSandbox(sandbox.to_string())
            }
            SessionError::NotRunning(_) => ToolError::SandboxGone(sandbox.to_string()),
            source => ToolError::Session {
                op,
                sandbox: sandbox.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// The message with its causes, as the agent reads it.
    pub fn message(&self) -> String {
        nook::error_chain(self)
    }
}

/// What ends the MCP server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the MCP handshake failed")]
    Handshake(#[source] Box<rmcp::service::ServerInitializeError>),
}
