//! `nook snapshot create|ls|rm`: named snapshots of booted, warmed VMs.

use clap::{Args, Subcommand};
use nook::{list_snapshots, named_snapshot, remove_snapshot, Vm};

use crate::exit::{self, report};
use crate::run::VmArgs;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Boot a VM, wait for its agent, run the warm-up command if given, and snapshot it.
    Create(Box<CreateArgs>),
    /// List named snapshots.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a named snapshot and its files.
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
    /// Replace an existing snapshot of that name.
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
            let snaps = list_snapshots(&home);
            if json {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "path": s.path,
                            "engine": s.manifest.engine,
                            "memory_mib": s.manifest.memory_mib,
                            "vcpus": s.manifest.vcpus,
                            "kernel_release": s.manifest.kernel_release,
                            "created": s.manifest.created,
                            "disk_bytes": s.disk_usage,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<20} {:<12} {:>8} {:>10}",
                    "NAME", "ENGINE", "MEMORY", "ON DISK"
                );
                for s in snaps {
                    println!(
                        "{:<20} {:<12} {:>6}Mi {:>8.1}Mi",
                        s.name,
                        s.manifest.engine,
                        s.manifest.memory_mib,
                        s.disk_usage as f64 / (1024.0 * 1024.0)
                    );
                }
            }
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

fn create(args: CreateArgs) -> i32 {
    let cfg = args.vm.config();
    let path = match named_snapshot(&cfg.home, &args.name) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if path.exists() {
        if !args.force {
            eprintln!(
                "nook: snapshot {} exists: remove it (nook snapshot rm {}) or pass --force",
                args.name, args.name
            );
            return exit::NOOK_FAILED;
        }
        if let Err(e) = remove_snapshot(&path) {
            report(&e);
            return exit::NOOK_FAILED;
        }
    }
    if let Some(session) = &args.session {
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
    let vm = match Vm::start(cfg) {
        Ok(vm) => vm,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if !args.warmup.is_empty() {
        match vm.exec(args.warmup.clone()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                eprintln!(
                    "nook: the warm-up command failed (exit {}); no snapshot taken",
                    out.status.shell_code()
                );
                return exit::NOOK_FAILED;
            }
            Err(e) => {
                eprintln!("nook: {e}");
                return e.exit_code();
            }
        }
    }
    match vm.snapshot(&path) {
        Ok(s) => {
            print_created(&s);
            0
        }
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
