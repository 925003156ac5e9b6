//! What `nook mcp` serves with.

use std::path::PathBuf;

/// Default cap on the output one call returns: 1 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 1024 * 1024;

/// Default idle timeout of sandboxes: 15 minutes.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 15 * 60;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// What every VM starts from (engine, memory, vCPUs, kernel, network,
    /// shares, template use, `home`): `nook mcp`'s VM options. Tool
    /// arguments (image, memory_mib, cpus, share) override it.
    pub vm: nook::VmConfig,
    /// The `nook` binary: sandboxes are sessions whose host process is it.
    pub exe: PathBuf,
    /// Most bytes one call returns: stdout and stderr together, or a file's content.
    pub max_output: u64,
    /// Idle timeout of sandboxes whose creator gives none.
    pub idle_timeout_s: u64,
    /// Host directories under which `sandbox_create` may share; none: no shares.
    pub allow_share: Vec<PathBuf>,
}

impl McpConfig {
    /// Defaults with the `nook` binary `exe`.
    pub fn new(exe: PathBuf) -> McpConfig {
        McpConfig {
            vm: nook::VmConfig {
                progress: false,
                ..nook::VmConfig::default()
            },
            exe,
            max_output: DEFAULT_MAX_OUTPUT,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            allow_share: Vec::new(),
        }
    }
}
