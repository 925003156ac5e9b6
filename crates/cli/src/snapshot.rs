//! `nook snapshot create|ls|rm`: named snapshots of booted, warmed VMs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use nook::stdio::{self, StdioStreams};
use nook::{named_snapshot, remove_snapshot, scan_snapshots, SnapshotScan, Vm};
use signal_hook::consts::SIGINT;

use crate::exit::{self, report};
use crate::run::{self, VmArgs};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Boot a VM, wait for its agent, run the warm-up command if given, and snapshot it.
    Create(Box<CreateArgs>),
    /// List named snapshots (damaged ones too, with why: remove or re-create them).
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a named snapshot and its files (damaged ones too).
    Rm {
        /// The snapshot's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name of the snapshot (letters, digits, '-', '_', '.').
    pub name: String,
    #[command(flatten)]
    pub vm: VmArgs,
    /// Replace an existing snapshot of that name (a damaged one is replaced without it).
    #[arg(long)]
    pub force: bool,
    /// Snapshot this running session (`nook start`) as it is, instead of booting a VM; it runs on.
    #[arg(long, value_name = "SESSION", conflicts_with = "warmup")]
    pub session: Option<String>,
    /// Warm-up command run in the VM before the snapshot (its state is kept).
    #[arg(last = true, value_name = "WARMUP")]
    pub warmup: Vec<String>,
}

pub fn snapshot(cmd: SnapshotCommand) -> i32 {
    let home = nook::default_home();
    match cmd {
        SnapshotCommand::Create(args) => create(*args),
        SnapshotCommand::Ls { json } => {
            list(&scan_snapshots(&home), json);
            0
        }
        SnapshotCommand::Rm { name } => {
            match named_snapshot(&home, &name).and_then(|p| remove_snapshot(&p)) {
                Ok(()) => 0,
                Err(e) => {
                    report(&e);
                    exit::NOOK_FAILED
                }
            }
        }
    }
}

/// Prints the snapshots, damaged ones included (with why).
fn list(snaps: &[SnapshotScan], json: bool) {
    if json {
        let v: Vec<_> = snaps
            .iter()
            .map(|s| match s {
                SnapshotScan::Usable(s) => serde_json::json!({
                    "name": s.name,
                    "path": s.path,
                    "state": "ok",
                    "engine": s.manifest.engine,
                    "memory_mib": s.manifest.memory_mib,
                    "vcpus": s.manifest.vcpus,
                    "kernel_release": s.manifest.kernel_release,
                    "created": s.manifest.created,
                    "disk_bytes": s.disk_usage,
                }),
                SnapshotScan::Damaged { name, path, reason } => serde_json::json!({
                    "name": name,
                    "path": path,
                    "state": "damaged",
                    "reason": reason,
                }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:<20} {:<12} {:>8} {:>10}",
        "NAME", "ENGINE", "MEMORY", "ON DISK"
    );
    for s in snaps {
        match s {
            SnapshotScan::Usable(s) => println!(
                "{:<20} {:<12} {:>6}Mi {:>8.1}Mi",
                s.name,
                s.manifest.engine,
                s.manifest.memory_mib,
                s.disk_usage as f64 / (1024.0 * 1024.0)
            ),
            SnapshotScan::Damaged { name, reason, .. } => {
                println!("{name:<20} damaged: {reason}")
            }
        }
    }
}

/// Ends a `snapshot create` interrupted by `signal`: the VM is torn down
/// by the caller dropping it, and no snapshot was made.
fn interrupted(signal: i32) -> i32 {
    eprintln!("nook: interrupted; no snapshot taken");
    exit::killed_by(signal)
}

fn create(args: CreateArgs) -> i32 {
    let mut cfg = args.vm.config();
    cfg.holder = "nook snapshot create".into();
    let path = match named_snapshot(&cfg.home, &args.name) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    // Replace only what is there now: a snapshot another nook makes
    // meanwhile is refused at the end (`--force`: the later one stays).
    let replace = path.exists();
    if replace {
        match nook::Snapshot::open(&path) {
            Ok(_) if !args.force => {
                eprintln!(
                    "nook: snapshot {} exists: remove it (nook snapshot rm {}) or pass --force",
                    args.name, args.name
                );
                return exit::NOOK_FAILED;
            }
            Ok(_) => {}
            Err(e) => eprintln!("nook: replacing damaged snapshot {}: {e}", args.name),
        }
    }
    if let Some(session) = &args.session {
        // The session host writes a new snapshot only where none is.
        if path.exists() {
            if let Err(e) = remove_snapshot(&path) {
                report(&e);
                return exit::NOOK_FAILED;
            }
        }
        let taken =
            nook_serve::SessionClient::open(&cfg.home, session).and_then(|c| c.snapshot(&path));
        return match taken.map(|()| nook::Snapshot::open(&path)) {
            Ok(Ok(s)) => {
                print_created(&s);
                0
            }
            Ok(Err(e)) => {
                report(&e);
                exit::NOOK_FAILED
            }
            Err(e) => {
                report(&e);
                exit::NOOK_FAILED
            }
        };
    }
    // Signals stop the work at the next step; what was made is removed.
    let (controller, controls) = stdio::controls();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(e) = run::handle_signals(controller, cancel.clone(), false) {
        report(&e);
        return exit::NOOK_FAILED;
    }
    cfg.cancel = Some(cancel.clone());
    let signal_of = |c: Option<&stdio::Controls>| c.and_then(|c| c.take_signal()).unwrap_or(SIGINT);
    let vm = match Vm::start(cfg) {
        Ok(vm) if cancel.load(Ordering::Relaxed) => {
            drop(vm);
            return interrupted(signal_of(Some(&controls)));
        }
        Ok(vm) => vm,
        Err(_) if cancel.load(Ordering::Relaxed) => return interrupted(signal_of(Some(&controls))),
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let controls = if args.warmup.is_empty() {
        Some(controls)
    } else {
        if let Err(code) = warm_up(&vm, &args.warmup, controls, &cancel) {
            return code;
        }
        None
    };
    // Replaces the old snapshot only once the new one is complete.
    let taken = if replace || args.force {
        vm.snapshot_replacing(&path)
    } else {
        vm.snapshot(&path)
    };
    match taken {
        Ok(s) => {
            print_created(&s);
            0
        }
        Err(nook::VmError::Cancelled) => interrupted(signal_of(controls.as_ref())),
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}

fn print_created(s: &nook::Snapshot) {
    println!(
        "snapshot {} ({}, {:.1} MiB on disk)",
        s.name,
        s.manifest.engine,
        s.disk_usage as f64 / (1024.0 * 1024.0)
    );
}

/// Runs the warm-up command; its output is shown only when it fails. A
/// signal goes to the command and ends the creation.
fn warm_up(
    vm: &Vm,
    warmup: &[String],
    controls: stdio::Controls,
    cancel: &AtomicBool,
) -> Result<(), i32> {
    let child = vm.exec(warmup.to_vec()).spawn().map_err(|e| {
        eprintln!("nook: {e}");
        e.exit_code()
    })?;
    let stderr = stdio::SharedBuffer::default();
    let streams = StdioStreams {
        stdin: None,
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(stderr.clone()),
    };
    match stdio::pump(child, streams, controls) {
        stdio::Ending::Exited(status) if status.success() => Ok(()),
        stdio::Ending::Interrupted { signal } => Err(interrupted(signal)),
        // The signal ended the command.
        _ if cancel.load(Ordering::Relaxed) => Err(interrupted(SIGINT)),
        ending => {
            eprint!("{}", String::from_utf8_lossy(&stderr.take()));
            if let Some(msg) = ending.message() {
                eprintln!("nook: {msg}");
            }
            eprintln!(
                "nook: the warm-up command failed (exit {}); no snapshot taken",
                ending.exit_code()
            );
            Err(exit::NOOK_FAILED)
        }
    }
}
