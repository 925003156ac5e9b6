//! Sessions: `nook start`, `exec`, `ps`, `stop`, `rm`, `logs` (the work is
//! in nook-serve; this parses arguments and prints).

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nook::stdio::{self, StdioStreams};
use nook_serve::wire::{ExecSpec, SessionErrorCode};
use nook_serve::{SessionClient, SessionPhase, SessionSpec, SessionState};

use crate::exit::{self, report};
use crate::run::{self, parse_env, VmArgs};
use crate::{args, image, term};

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Name of the session (default: a generated one, printed).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Attach a volume for the session's life: NAME:/path[:ro] (a named volume, created on first use) or /host/file.img:/path[:ro]. Repeatable; locked while the session runs.
    #[arg(short = 'v', long = "volume", value_name = "SRC:/PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Size of the named volumes --volume creates.
    #[arg(long, default_value = "1G", value_parser = image::parse_size, value_name = "SIZE")]
    pub volume_size: u64,
    /// Stop the session after this many seconds with no command running and no client.
    #[arg(long, value_name = "SECS", value_parser = args::parse_whole_seconds)]
    pub idle_timeout: Option<u64>,
    /// Stop the session this many seconds after it started.
    #[arg(long, value_name = "SECS", value_parser = args::parse_whole_seconds)]
    pub max_duration: Option<u64>,
    /// Image to boot (from the store, pulled when missing); default: the built-in minimal root.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Forward stdin even when it is a terminal (it is always forwarded from a pipe or file).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (raw mode, window resize).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in the background: print the process id and return; the process survives this command.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set an environment variable in the guest (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this guest user: name, uid, uid:gid or name:group.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Kill the command (its whole process group) after this many seconds; nook then exits 124.
    #[arg(long, value_name = "SECS", value_parser = args::parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<std::time::Duration>,
    /// The session.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Also list exited sessions.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print JSON (an array of session states).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Stop a running session first.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new console output until the session ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many lines of the console to show.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub lines: usize,
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Source: a host path, or NAME:/path in session NAME.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Destination: a host path, or NAME:/path in session NAME (into it when it is a directory).
    #[arg(value_name = "DST")]
    pub dst: String,
}

#[derive(Args, Debug)]
pub struct HostArgs {
    pub dir: std::path::PathBuf,
}

fn home() -> std::path::PathBuf {
    nook::default_home()
}

pub fn start(args: StartArgs) -> i32 {
    let spec = match session_spec(&args, args.image.clone()) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    let exe = match current_exe() {
        Ok(exe) => exe,
        Err(code) => return code,
    };
    match nook_serve::start(&home(), &spec, &exe) {
        Ok(_) => {
            println!("{}", spec.name);
            0
        }
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}

/// The session `nook start` (or `nook desktop start`) asks for, booting
/// `image` (a store reference, pulled when missing); on a bad argument,
/// says so and gives the exit code.
pub fn session_spec(args: &StartArgs, image: Option<String>) -> Result<SessionSpec, i32> {
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "s{}-{}",
            nook_serve::now_unix() % 100_000,
            std::process::id()
        )
    });
    if let Err(e) = nook_serve::validate_name(&name) {
        report(&e);
        return Err(exit::NOOK_FAILED);
    }
    if let Some(reference) = &image {
        if let Err(e) = image::resolve_image(reference, false) {
            report(&e);
            return Err(exit::NOOK_FAILED);
        }
    }
    let mut volumes = Vec::new();
    for v in &args.volumes {
        match image::parse_volume(v, args.volume_size) {
            Ok(m) => volumes.push(nook_serve::SpecMount {
                host_path: m.disk,
                guest_path: m.guest_path,
                read_only: m.read_only,
            }),
            Err(msg) => {
                eprintln!("nook: {msg}");
                return Err(exit::NOOK_FAILED);
            }
        }
    }
    let cfg = args.vm.config();
    Ok(SessionSpec {
        image,
        kernel: cfg.kernel.clone(),
        agent: cfg.agent.clone(),
        template: cfg.template,
        idle_timeout_s: args.idle_timeout,
        max_duration_s: args.max_duration,
        net: cfg.net.clone(),
        shares: cfg.shares.iter().map(nook_serve::SpecMount::from).collect(),
        volumes,
        balloon: cfg.balloon,
        ..SessionSpec::new(
            name,
            args.vm.engine_name(),
            cfg.memory_mib,
            cfg.vcpus,
            args.vm.boot_timeout,
        )
    })
}

/// This program, which session hosts run as; on failure, says so and
/// gives the exit code.
pub fn current_exe() -> Result<std::path::PathBuf, i32> {
    std::env::current_exe().map_err(|e| {
        report(&e);
        exit::NOOK_FAILED
    })
}

pub fn exec(args: ExecArgs) -> i32 {
    let env = match parse_env(&args.env) {
        Ok(env) => env,
        Err(code) => return code,
    };
    let client = match SessionClient::open(&home(), &args.name) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let tty = args.tty && term::stdin_is_tty() && !args.detach;
    let forward_stdin = !args.detach && (args.interactive || tty || !term::stdin_is_tty());
    let spec = ExecSpec {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        tty: tty.then(|| term::size().unwrap_or(nook::Winsize { rows: 24, cols: 80 })),
        stdin: forward_stdin,
        detach: args.detach,
        timeout_ms: args
            .timeout
            .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
        service: false,
    };
    let (controller, controls) = stdio::controls();
    if !args.detach {
        if let Err(e) = run::handle_signals(controller, Arc::new(AtomicBool::new(false)), tty) {
            report(&e);
            return exit::NOOK_FAILED;
        }
    }
    let remote = match client.exec(spec) {
        Ok(r) => r,
        Err(e) => return exec_failed(&e),
    };
    if args.detach {
        println!("{}", remote.pid);
        return 0;
    }
    let command = match remote.into_pumped(forward_stdin) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let raw = if tty { term::RawMode::enable() } else { None };
    // The same pump as `nook run`: closed stdout, write errors, signals
    // and the exit code follow one policy.
    let ending = stdio::pump(command, StdioStreams::inherit(forward_stdin), controls);
    drop(raw);
    if let Some(msg) = ending.message() {
        eprintln!("nook: {msg}");
    }
    ending.exit_code()
}

fn error_code(code: SessionErrorCode) -> i32 {
    match code {
        SessionErrorCode::NotFound => exit::NOT_FOUND,
        SessionErrorCode::NotExecutable => exit::NOT_EXECUTABLE,
        _ => exit::NOOK_FAILED,
    }
}

fn exec_failed(e: &nook_serve::SessionError) -> i32 {
    report(e);
    match e {
        nook_serve::SessionError::Refused { code, .. } => error_code(*code),
        _ => exit::NOOK_FAILED,
    }
}

fn age(created: u64) -> String {
    let s = nook_serve::now_unix().saturating_sub(created);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn ps(args: PsArgs) -> i32 {
    let mut list: Vec<SessionState> = match nook_serve::list_sessions(&home()) {
        Ok(l) => l,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if !args.all {
        list.retain(|s| s.state != SessionPhase::Exited);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return 0;
    }
    println!(
        "{:<20} {:<12} {:<24} {:<8} {:>6} {:>10} {:>4}  {:<24} EXIT REASON",
        "NAME", "ENGINE", "IMAGE", "STATE", "AGE", "MEMORY", "CPUS", "PORTS"
    );
    for s in list {
        let state = serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let ports: Vec<String> = s
            .published
            .iter()
            .map(|p| {
                format!(
                    "{}->{}/{}",
                    p.host, p.mapping.guest_port, p.mapping.protocol
                )
            })
            .collect();
        let ports = if ports.is_empty() {
            "-".to_string()
        } else {
            ports.join(",")
        };
        println!(
            "{:<20} {:<12} {:<24} {:<8} {:>6} {:>10} {:>4}  {:<24} {}",
            s.name,
            s.engine,
            s.image.as_deref().unwrap_or("-"),
            state,
            age(s.created_unix),
            crate::balloon::memory_column(s.memory_mib, s.memory.as_deref()),
            s.vcpus,
            ports,
            s.exit_reason.as_deref().unwrap_or("")
        );
    }
    0
}

pub fn stop(args: NameArg) -> i32 {
    match nook_serve::stop(&home(), &args.name) {
        Ok(st) if st.state == SessionPhase::Exited => {
            println!("{}", args.name);
            0
        }
        Ok(_) => {
            eprintln!("nook: session {} did not stop in time", args.name);
            exit::NOOK_FAILED
        }
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}

pub fn rm(args: RmArgs) -> i32 {
    let mut code = 0;
    for name in &args.names {
        match nook_serve::remove(&home(), name, args.force) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                report(&e);
                code = exit::NOOK_FAILED;
            }
        }
    }
    code
}

pub fn logs(args: LogsArgs) -> i32 {
    let client = match SessionClient::open(&home(), &args.name) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let mut shown = String::new();
    loop {
        let text = match client.logs(args.lines) {
            Ok(t) => t,
            // The session ended while following.
            Err(_) if args.follow => return 0,
            Err(e) => {
                report(&e);
                return exit::NOOK_FAILED;
            }
        };
        print!("{}", new_part(&shown, &text));
        let _ = std::io::stdout().flush();
        if !args.follow {
            return 0;
        }
        shown = text;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `now` adds to `before`: both are tails of the same growing console.
fn new_part<'a>(before: &str, now: &'a str) -> &'a str {
    if before.is_empty() {
        return now;
    }
    // The longest suffix of `before` that starts `now`.
    let mut start = 0;
    while start < before.len() {
        let tail = &before[start..];
        if let Some(added) = now.strip_prefix(tail) {
            return added;
        }
        start += before[start..].chars().next().map_or(1, char::len_utf8);
    }
    now
}

pub fn cp(args: CpArgs) -> i32 {
    use nook_serve::CopyPath;
    let result = match (CopyPath::parse(&args.src), CopyPath::parse(&args.dst)) {
        (CopyPath::Host(src), CopyPath::Guest { session, path }) => {
            SessionClient::open(&home(), &session)
                .and_then(|c| nook_serve::copy_in(&c, &src, &path))
        }
        (CopyPath::Guest { session, path }, CopyPath::Host(dst)) => {
            SessionClient::open(&home(), &session)
                .and_then(|c| nook_serve::copy_out(&c, &path, &dst))
        }
        _ => {
            eprintln!("nook: cp copies between the host and a session: exactly one of SRC and DST is NAME:/path");
            return exit::NOOK_FAILED;
        }
    };
    match result {
        Ok(_) => 0,
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}

pub fn host(args: HostArgs) -> i32 {
    nook_serve::run_host(&args.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_part_is_what_the_console_added() {
        assert_eq!(new_part("", "a\nb\n"), "a\nb\n");
        assert_eq!(new_part("a\nb\n", "a\nb\nc\n"), "c\n");
        assert_eq!(new_part("a\nb\n", "b\nc\n"), "c\n");
        assert_eq!(new_part("a\n", "a\n"), "");
    }
}
