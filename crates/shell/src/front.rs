//! `nook shell`: picks the back end, restores the workspace's state, runs
//! a line (`-c`), a script (`-f`) or the interactive loop, and stops the
//! session at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::host::HostBackend;
use crate::backend::sidecar::SidecarBackend;
use crate::backend::vm::{VmBackend, VmOptions};
use crate::backend::Backend;
use crate::config::{BackendChoice, Settings, WorkspaceMode};
use crate::interp::{Flow, Shell};
use crate::resume::{state_dir, workspace_key, ResumeState};
use crate::signals::Signals;
use crate::workspace::WsPath;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellScript {
    /// The interactive loop.
    Interactive,
    /// `-c LINE`
    Line(String),
    /// `-f FILE`
    File(PathBuf),
}

/// One `nook shell` run.
#[derive(Debug, Clone)]
pub struct ShellInvocation {
    pub workspace: PathBuf,
    pub settings: Settings,
    pub script: ShellScript,
    /// `-e`: `set -e` from the start.
    pub errexit: bool,
    /// Positional arguments for a script.
    pub args: Vec<String>,
    /// Ignore the saved state of this workspace.
    pub fresh: bool,
    pub home: PathBuf,
    /// The `nook` binary.
    pub exe: PathBuf,
    pub kernel: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub boot_timeout_s: u64,
}

/// Exit code when the shell itself cannot start.
const SHELL_FAILED: i32 = 125;
/// Exit code of a script that does not parse.
const PARSE_FAILED: i32 = 2;

fn is_rust_workspace(dir: &Path) -> bool {
    dir.join("Cargo.toml").is_file()
}

/// Runs the shell; returns its exit code.
pub fn run(inv: ShellInvocation) -> i32 {
    let started = Instant::now();
    let workspace = match std::fs::canonicalize(&inv.workspace) {
        Ok(w) if w.is_dir() => w,
        Ok(w) => {
            eprintln!("nook shell: {}: not a directory", w.display());
            return SHELL_FAILED;
        }
        Err(e) => {
            eprintln!("nook shell: {}: {e}", inv.workspace.display());
            return SHELL_FAILED;
        }
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nook shell: cannot handle signals: {e}");
            return SHELL_FAILED;
        }
    };
    let backend = match make_backend(&inv, &workspace, &signals) {
        Ok(b) => b,
        Err(message) => {
            eprintln!("nook shell: {message}");
            return SHELL_FAILED;
        }
    };
    let mut shell = Shell::new(backend, signals.interrupts.clone());
    shell.tty = crate::term::stdin_is_tty();
    shell.timeout_ms = inv.settings.timeout_ms;
    shell.errexit = inv.errexit;
    shell.args = inv.args.clone();
    let dir = state_dir(&inv.home, &workspace);
    if !inv.fresh {
        if let Some(st) = ResumeState::load(&dir) {
            restore(&mut shell, &st);
        }
    }
    tracing::debug!("shell: ready in {:?}", started.elapsed());
    let code = match &inv.script {
        ShellScript::Interactive => {
            let _ = writeln!(
                std::io::stderr(),
                "nook shell: workspace {} on the {} backend (`help` lists builtins, Ctrl-D leaves)",
                workspace.display(),
                shell.backend().name()
            );
            let host_dir = (inv.settings.mode == WorkspaceMode::Sync).then(|| workspace.clone());
            crate::repl::run(&mut shell, Some(dir.join("history")), host_dir)
        }
        ShellScript::Line(line) => run_text(&mut shell, line, "-c"),
        ShellScript::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => run_text(&mut shell, &text, &path.display().to_string()),
            Err(e) => {
                eprintln!("nook shell: {}: {e}", path.display());
                PARSE_FAILED
            }
        },
    };
    let state = ResumeState {
        cwd: shell.cwd().display(),
        env: shell.exported_vars(),
    };
    if let Err(e) = state.save(&dir) {
        eprintln!(
            "nook shell: cannot save the shell state in {}: {e}",
            dir.display()
        );
    }
    if let Err(e) = shell.backend().shutdown() {
        eprintln!("nook shell: {}", nook::error_chain(&e));
    }
    code
}

fn restore(shell: &mut Shell, st: &ResumeState) {
    let root = shell.backend().guest_root().to_string();
    if let Ok(cwd) = WsPath::root().resolve(&st.cwd, &root) {
        if matches!(
            shell.backend().fs().kind(&cwd),
            Ok(Some(crate::workspace::EntryKind::Dir))
        ) {
            shell.cwd = cwd;
        }
    }
    for (k, v) in &st.env {
        shell.export(k, v);
    }
}

/// Parses all of `text` first (so a script with a syntax error runs
/// nothing), then runs it; the exit status is the last command's.
fn run_text(shell: &mut Shell, text: &str, name: &str) -> i32 {
    if let Err(e) = crate::parse::parse(text) {
        eprintln!("nook shell: {name}: {e}");
        return PARSE_FAILED;
    }
    match shell.run_source(text) {
        Ok(Flow::Exit(code)) => code,
        Ok(_) => shell.status(),
        Err(e) => {
            eprintln!("nook shell: {name}: {e}");
            PARSE_FAILED
        }
    }
}

fn make_backend(
    inv: &ShellInvocation,
    workspace: &Path,
    signals: &Signals,
) -> Result<Box<dyn Backend>, String> {
    let s = &inv.settings;
    let choice = match s.backend {
        BackendChoice::Auto => {
            match vm_engine_missing() {
                None => {
                    eprintln!("nook shell: backend vm (a nook session VM; --backend host runs without one)");
                    BackendChoice::Vm
                }
                Some(why) => {
                    eprintln!("nook shell: backend host: {why}");
                    BackendChoice::Host
                }
            }
        }
        other => other,
    };
    if s.mode == WorkspaceMode::Guest && choice != BackendChoice::Vm {
        return Err("the guest-primary workspace mode needs the vm backend".into());
    }
    match choice {
        BackendChoice::Vm | BackendChoice::Auto => {
            let opts = VmOptions {
                home: inv.home.clone(),
                exe: inv.exe.clone(),
                session: format!("shell-{}", &workspace_key(workspace)[..12]),
                image: s.image.clone(),
                rust: s.image.is_none() && is_rust_workspace(workspace),
                engine: s.engine.clone(),
                memory_mib: s.memory_mib,
                vcpus: s.vcpus,
                kernel: inv.kernel.clone(),
                agent: inv.agent.clone(),
                boot_timeout_s: inv.boot_timeout_s,
                workspace: workspace.to_path_buf(),
                guest_root: s.guest_workspace.clone(),
                stop_on_exit: s.stop_on_exit,
                volume: (s.mode == WorkspaceMode::Guest)
                    .then(|| format!("shell-{}", &workspace_key(workspace)[..12])),
            };
            VmBackend::start(opts, signals.clone(), s.eager)
                .map(|b| Box::new(b) as Box<dyn Backend>)
                .map_err(|e| nook::error_chain(&e))
        }
        BackendChoice::Host => {
            eprintln!("nook shell: {}", crate::backend::host::WEAKER_ISOLATION);
            HostBackend::new(
                workspace.to_path_buf(),
                s.guest_workspace.clone(),
                signals.clone(),
            )
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| nook::error_chain(&e))
        }
        BackendChoice::Sidecar => {
            let socket = s.socket.clone().ok_or_else(|| {
                "the sidecar backend needs a socket: --socket PATH or DEVSHELL_VM_SOCKET (e.g. `nook serve`'s)".to_string()
            })?;
            SidecarBackend::start(
                socket,
                format!("shell-{}", &workspace_key(workspace)[..12]),
                workspace.to_path_buf(),
                s.guest_workspace.clone(),
            )
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| nook::error_chain(&e))
        }
    }
}

/// Why no VM engine can run here, if none can: neither a usable
/// `/dev/kvm` nor QEMU.
fn vm_engine_missing() -> Option<String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!kvm && !qemu)
        .then(|| "no VM engine here (no usable /dev/kvm, no qemu-system-x86_64)".to_string())
}
