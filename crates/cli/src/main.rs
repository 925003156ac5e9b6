//! `nook`: run commands inside hardware-isolated Linux microVMs.
//!
//! Exit codes (see `nook --help`): the guest command's own code; 124 when
//! `--timeout` killed it; 125 when nook itself or the VM failed; 126 when the
//! command cannot be executed; 127 when it does not exist; 128+N when signal
//! N killed it; 130 / 143 when nook was interrupted by SIGINT / SIGTERM.
#![forbid(unsafe_code)]

mod args;
mod balloon;
mod boot;
mod desktop;
mod desktop_act;
mod e2b;
mod exit;
mod image;
mod mcp;
mod run;
mod serve;
mod session;
mod setup;
mod shell;
mod snapshot;
mod term;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "nook",
    version,
    about = "Run commands inside hardware-isolated Linux microVMs",
    after_help = "Exit codes: the guest command's own code; 2 usage error; 124 timeout; 125 nook or VM failure; \
126 command not executable; 127 command not found; 128+N killed by signal N; 130/143 nook interrupted.\n\
Environment: NOOK_HOME (cache dir), NOOK_KERNEL (kernel image), NOOK_AGENT (guest agent), \
NOOK_QEMU (qemu binary), NOOK_LOG (log filter, e.g. debug), NOOK_SOCKET (the daemon's socket, for clients), \
NOOK_NO_SECCOMP=1 (debugging only: seccomp filters off), \
NOOK_NO_CONFINE=1 (debugging only: Landlock, capability drop and resource limits off)."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// For debugging only: run the kvm engine's vCPU and device threads and
    /// the virtio-fs server without their seccomp filters (also
    /// NOOK_NO_SECCOMP=1). Weakens isolation; see docs/security.md.
    #[arg(long, global = true)]
    no_seccomp: bool,
    /// For debugging only: run the VMM threads, the virtio-fs server and
    /// QEMU without Landlock rules, capability drop, no-new-privileges and
    /// resource limits (also NOOK_NO_CONFINE=1). Weakens isolation; see
    /// docs/security.md.
    #[arg(long, global = true)]
    no_confine: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list and remove named snapshots of booted (and warmed) VMs.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Run a command (or an image's default command) in a fresh microVM and exit with its exit code.
    Run(run::RunArgs),
    /// Start a session: a VM that outlives this command; prints its name.
    Start(session::StartArgs),
    /// Run a command in a running session (stdio, TTY and exit code as `nook run`).
    Exec(session::ExecArgs),
    /// Copy files and directory trees between the host and a session (NAME:/path is the guest side).
    Cp(session::CpArgs),
    /// List sessions: name, engine, image, state, age, memory (left/configured when a balloon holds some), CPUs.
    Ps(session::PsArgs),
    /// Set a session's memory balloon (memory taken back from the guest) and show its memory; the session needs --balloon.
    Balloon(balloon::BalloonArgs),
    /// Stop a session cleanly (the guest syncs its volumes and powers off).
    Stop(session::NameArg),
    /// Remove sessions (-f stops running ones first).
    Rm(session::RmArgs),
    /// Print a session's guest console.
    Logs(session::LogsArgs),
    /// Serve the JSON-lines daemon protocol and the devshell-vm sidecar protocol on a Unix socket (see docs/daemon.md); with --e2b, the E2B-compatible API over HTTP instead (docs/e2b.md).
    Serve(serve::ServeArgs),
    /// A dev shell over a workspace: builtins act on it, every other program runs in a session VM that sees it.
    Shell(shell::ShellArgs),
    /// Runs a session's host process (started by `nook start`).
    #[command(name = "__session-host", hide = true)]
    SessionHost(session::HostArgs),
    /// Pull an image from a registry into the image store.
    Pull(image::PullArgs),
    /// List the images in the store.
    Images(image::ImagesArgs),
    /// Remove an image name from the store (the image goes with its last name).
    Rmi(image::RmiArgs),
    /// Manage images: ls, pull, rm, gc, build (Debian), import (OCI layout, docker archive).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Remove leftovers of killed runs (run dirs, scratch disks, half-made snapshots), unnamed images, unused blobs and stale templates.
    Gc,
    /// Manage named volumes: ls, create, rm.
    #[command(subcommand)]
    Volume(image::VolumeCommand),
    /// Boot a kernel with no agent, its serial console on stdout; the exit code says how it ended.
    #[command(after_help = boot::EXIT_CODES_HELP)]
    Boot(boot::BootArgs),
    /// Prepare the guest kernel and initramfs, probe the engines, and say which will be used.
    Setup(setup::SetupArgs),
    /// Desktop sandboxes for computer-use agents: start, view, screenshot, do (see docs/desktop.md).
    #[command(subcommand)]
    Desktop(desktop::DesktopCommand),
    /// Serve MCP (Model Context Protocol) on stdin/stdout: microVM sandboxes as tools for AI agents (see docs/mcp.md).
    Mcp(mcp::McpArgs),
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.no_seccomp {
        // Still one thread: the variable also reaches the processes nook
        // starts (session hosts).
        std::env::set_var("NOOK_NO_SECCOMP", "1");
        nook::set_seccomp_enabled(false);
    }
    if cli.no_confine {
        // As above: reaches session hosts and QEMU too.
        std::env::set_var("NOOK_NO_CONFINE", "1");
        nook::set_confine_enabled(false);
    }
    match &cli.command {
        Command::Run(a) => a.vm.check_usage(),
        Command::Start(a) => a.vm.check_usage(),
        Command::Desktop(desktop::DesktopCommand::Start(a)) => a.session.vm.check_usage(),
        Command::Setup(a) => a.vm.check_usage(),
        Command::Mcp(a) => a.vm.check_usage(),
        Command::Snapshot(snapshot::SnapshotCommand::Create(a)) => a.vm.check_usage(),
        _ => {}
    }
    let code = match cli.command {
        Command::Run(args) => run::run(args, matches.subcommand_matches("run")),
        Command::Start(args) => session::start(args),
        Command::Exec(args) => session::exec(args),
        Command::Cp(args) => session::cp(args),
        Command::Ps(args) => session::ps(args),
        Command::Balloon(args) => balloon::balloon(args),
        Command::Stop(args) => session::stop(args),
        Command::Rm(args) => session::rm(args),
        Command::Logs(args) => session::logs(args),
        Command::Serve(args) => serve::serve(args),
        Command::SessionHost(args) => session::host(args),
        Command::Pull(args) => image::pull(args),
        Command::Images(args) => image::images(args),
        Command::Rmi(args) => image::rmi(args),
        Command::Image(cmd) => image::image(cmd),
        Command::Volume(cmd) => image::volume(cmd),
        Command::Gc => image::gc(),
        Command::Setup(args) => setup::setup(args),
        Command::Mcp(args) => mcp::mcp(args),
        Command::Desktop(cmd) => desktop::desktop(cmd),
        Command::Boot(args) => boot::boot(args),
        Command::Snapshot(cmd) => snapshot::snapshot(cmd),
        Command::Shell(args) => shell::shell(args),
    };
    std::process::exit(code);
}
