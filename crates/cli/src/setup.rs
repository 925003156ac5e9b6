//! `nook setup`: prepare assets and report the engine choice.

use std::time::Instant;

use clap::Args;
use nook::{select_engine, EngineChoice};

use crate::exit::{self, report};
use crate::run::VmArgs;

#[derive(Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Re-resolve the kernel package even when one is cached.
    #[arg(long)]
    pub update: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn setup(args: SetupArgs) -> i32 {
    let cfg = args.vm.config();
    let t0 = Instant::now();
    let assets = match nook::prepare_assets(&cfg, args.update) {
        Ok(a) => a,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let assets_time = t0.elapsed();
    if args.update {
        // Every template was made from the assets just refreshed.
        if let Err(e) = nook::gc_templates(&cfg.home, true) {
            report(&e);
            return exit::NOOK_FAILED;
        }
    }
    let verdict = nook::probe_kvm(&cfg.home);
    let mut choice = match select_engine(cfg.engine, &cfg.home) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    // --no-template (or NOOK_NO_TEMPLATE): no VM is booted to make the
    // default configuration's template, which makes the first `nook run`
    // as fast as the next.
    let slow_kvm = matches!(
        choice,
        EngineChoice::Kvm {
            hardware_speed: false,
            ..
        }
    );
    let template = if !cfg.template {
        TemplateOutcome::Skipped
    } else if slow_kvm {
        // A boot would take hours here; the first `nook run` on kvm makes
        // the template if it ever gets that far.
        TemplateOutcome::Failed("not made: the kvm engine runs guest kernels emulated here".into())
    } else {
        make_default_template(&cfg, &mut choice)
    };
    if args.json {
        let v = serde_json::json!({
            "home": cfg.home,
            "kernel": assets.kernel,
            "kernel_release": assets.kernel_release,
            "initramfs": assets.initramfs,
            "modules": assets.modules,
            "downloaded": assets.work.downloaded,
            "built_initramfs": assets.work.built_initramfs,
            "assets_ms": assets_time.as_secs_f64() * 1000.0,
            "engine": choice.label(),
            "reason": choice.reason(),
            "kvm": verdict,
            "template": template.json(),
            "hardening": nook::hardening(),
        });
        println!("{v:#}");
        return 0;
    }
    println!("nook home:     {}", cfg.home.display());
    println!(
        "guest kernel:  {} ({})",
        assets.kernel_release,
        assets.kernel.display()
    );
    println!("initramfs:     {}", assets.initramfs.display());
    println!(
        "assets:        {} in {:.1} ms",
        match (assets.work.downloaded, assets.work.built_initramfs) {
            (true, _) => "downloaded and built",
            (false, true) => "built",
            (false, false) => "cached",
        },
        assets_time.as_secs_f64() * 1000.0
    );
    match (verdict.ns_per_iteration, verdict.speed) {
        (Some(ns), Some(speed)) => println!(
            "kvm probe:     {ns:.0} ns per ring-0 loop iteration, fastest of {} trials ({})",
            verdict.trials.len(),
            match speed {
                nook::Ring0Speed::Hardware => "hardware speed",
                nook::Ring0Speed::Emulated => "emulated",
                nook::Ring0Speed::Inconclusive => "inconclusive",
            }
        ),
        _ => println!("kvm probe:     {}", verdict.reason),
    }
    println!("engine:        {}: {}", choice.label(), choice.reason());
    println!("template:      {}", template.text());
    println!("hardening:     {}", hardening_text(nook::hardening()));
    if let EngineChoice::Kvm {
        hardware_speed: false,
        ..
    } = choice
    {
        eprintln!("nook: warning: KVM runs guest kernels emulated on this host; the kvm engine will be very slow");
    }
    0
}

/// What setup did about the default template.
enum TemplateOutcome {
    Skipped,
    /// Booted (or restored) in this long; whether it was already there.
    Ready {
        existed: bool,
        secs: f64,
    },
    Failed(String),
}

impl TemplateOutcome {
    fn json(&self) -> serde_json::Value {
        match self {
            TemplateOutcome::Skipped => serde_json::json!({"state": "skipped"}),
            TemplateOutcome::Ready { existed, secs } => {
                serde_json::json!({"state": if *existed { "cached" } else { "made" }, "seconds": secs})
            }
            TemplateOutcome::Failed(why) => serde_json::json!({"state": "failed", "error": why}),
        }
    }

    fn text(&self) -> String {
        match self {
            TemplateOutcome::Skipped => "not made (--no-template or NOOK_NO_TEMPLATE)".into(),
            TemplateOutcome::Ready {
                existed: true,
                secs,
            } => {
                format!("default configuration cached (a clone started in {secs:.2} s)")
            }
            TemplateOutcome::Ready {
                existed: false,
                secs,
            } => {
                format!("default configuration booted and snapshotted in {secs:.2} s")
            }
            TemplateOutcome::Failed(why) => format!("cannot make it: {why}"),
        }
    }
}

/// Starts the default configuration once, so that its template exists and
/// the first `nook run` restores instead of booting. The engine that really
/// ran (auto may have fallen back) replaces `choice`.
fn make_default_template(cfg: &nook::VmConfig, choice: &mut EngineChoice) -> TemplateOutcome {
    let t0 = Instant::now();
    let vm = match nook::Vm::start(cfg.clone()) {
        Ok(vm) => vm,
        Err(e) => return TemplateOutcome::Failed(crate::exit::chain(&e)),
    };
    let existed = vm.origin() == nook::VmOrigin::Template;
    if vm.engine().id() != choice.id() {
        // auto fell back from kvm: say what really runs.
        *choice = vm.engine().clone();
    }
    let made = matches!(
        vm.origin(),
        nook::VmOrigin::Template | nook::VmOrigin::BootedMadeTemplate
    );
    let _ = vm.stop();
    if made {
        TemplateOutcome::Ready {
            existed,
            secs: t0.elapsed().as_secs_f64(),
        }
    } else {
        TemplateOutcome::Failed(
            "the VM booted but its snapshot failed (NOOK_LOG=debug says why)".into(),
        )
    }
}
/// One line on the host-side hardening in force.
fn hardening_text(h: nook::Hardening) -> String {
    let seccomp = if h.seccomp {
        "seccomp on"
    } else {
        "seccomp OFF"
    };
    let confine = match (h.confine, h.landlock_abi) {
        (false, _) => "confinement OFF".to_string(),
        (true, Some(abi)) => format!(
            "confinement on (Landlock ABI {abi} for VM threads and QEMU, capabilities, rlimits)"
        ),
        (true, None) => {
            "confinement on without Landlock (kernel has none: capabilities, rlimits)".to_string()
        }
    };
    format!("{seccomp}, {confine}")
}
