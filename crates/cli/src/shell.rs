//! `nook shell`: the dev shell (crates/shell), configured from flags.

use std::path::PathBuf;

use clap::Args;
use nook_shell::config::{BackendChoice, Settings, ShellFlags, WorkspaceMode};
use nook_shell::{ShellInvocation, ShellScript};

use crate::{args, exit};

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// The workspace directory (default: the current directory).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Run LINE and exit with its status.
    #[arg(short = 'c', value_name = "LINE", conflicts_with = "file")]
    pub command: Option<String>,
    /// Run the script FILE (parsed whole first) and exit with its status.
    #[arg(short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Exit at the first failing command (`set -e`).
    #[arg(short = 'e')]
    pub errexit: bool,
    /// Start over: ignore the working directory and variables saved for this workspace.
    #[arg(long)]
    pub fresh: bool,
    /// Where programs run: auto, vm (a nook session), host (a namespace sandbox), sidecar (devshell-vm protocol) [env: NOOK_SHELL_BACKEND, DEVSHELL_VM_BACKEND; DEVSHELL_VM=off means host].
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<BackendChoice>,
    /// sync (the host directory, shared live) or guest (a volume in the session) [env: NOOK_SHELL_WORKSPACE_MODE, DEVSHELL_VM_WORKSPACE_MODE].
    #[arg(long, value_name = "MODE")]
    pub workspace_mode: Option<WorkspaceMode>,
    /// Where programs see the workspace [default: /workspace] [env: NOOK_SHELL_GUEST_WORKSPACE, DEVSHELL_VM_GUEST_WORKSPACE].
    #[arg(long, value_name = "PATH")]
    pub guest_workspace: Option<String>,
    /// Image of the session (default: the built-in root; the Rust toolchain image for a Cargo workspace or `cargo`) [env: NOOK_SHELL_IMAGE].
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// VM engine: auto, qemu or kvm [env: NOOK_SHELL_ENGINE].
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Guest memory in MiB [default: 1024, enough for rustc] [env: NOOK_SHELL_MEMORY_MIB].
    #[arg(long = "memory", value_name = "MIB", value_parser = args::parse_memory_mib)]
    pub memory_mib: Option<u32>,
    /// Number of vCPUs [default: 1] [env: NOOK_SHELL_CPUS].
    #[arg(long = "cpus", value_name = "N", value_parser = args::parse_vcpus)]
    pub vcpus: Option<u8>,
    /// Kill each program after this many milliseconds [env: NOOK_SHELL_TIMEOUT_MS, DEVSHELL_VM_EXEC_TIMEOUT_MS].
    #[arg(long = "timeout-ms", value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// The sidecar's socket [env: NOOK_SHELL_SOCKET, DEVSHELL_VM_SOCKET].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Leave the session running at exit; the next shell in this workspace reattaches to it [env: NOOK_SHELL_STOP_ON_EXIT=0, DEVSHELL_VM_STOP_ON_EXIT=0].
    #[arg(long)]
    pub keep_session: bool,
    /// Boot at the first program instead of as the shell starts [env: NOOK_SHELL_EAGER=0, DEVSHELL_VM_EAGER=0].
    #[arg(long)]
    pub lazy: bool,
    /// Guest kernel image to boot instead of Debian's cloud kernel.
    #[arg(long, env = "NOOK_KERNEL", value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// How long to wait for the guest to boot, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = args::parse_whole_seconds)]
    pub boot_timeout: u64,
    /// Positional arguments of the script ($1, $2, ...).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

pub fn shell(a: ShellArgs) -> i32 {
    let flags = ShellFlags {
        backend: a.backend,
        mode: a.workspace_mode,
        guest_workspace: a.guest_workspace.clone(),
        image: a.image.clone(),
        engine: a.engine.clone(),
        memory_mib: a.memory_mib,
        vcpus: a.vcpus,
        timeout_ms: a.timeout_ms,
        socket: a.socket.clone(),
        stop_on_exit: a.keep_session.then_some(false),
        eager: a.lazy.then_some(false),
    };
    let settings = match Settings::resolve(&flags, |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nook shell: {e}");
            return exit::USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("nook shell: cannot find the nook binary: {e}");
            return exit::NOOK_FAILED;
        }
    };
    let defaults = nook::VmConfig::default();
    let script = match (a.command, a.file) {
        (Some(line), _) => ShellScript::Line(line),
        (None, Some(file)) => ShellScript::File(file),
        (None, None) => ShellScript::Interactive,
    };
    nook_shell::run(ShellInvocation {
        workspace: a.dir.unwrap_or_else(|| PathBuf::from(".")),
        settings,
        script,
        errexit: a.errexit,
        args: a.args,
        fresh: a.fresh,
        home: nook::default_home(),
        exe,
        kernel: a.kernel.or(defaults.kernel),
        agent: defaults.agent,
        boot_timeout_s: a.boot_timeout,
    })
}
