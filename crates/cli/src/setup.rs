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
    let verdict = nook::probe_kvm(&cfg.home);
    let choice = match select_engine(cfg.engine, &cfg.home) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
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
    match verdict.ns_per_iteration {
        Some(ns) => println!(
            "kvm probe:     {ns:.0} ns per ring-0 loop iteration ({})",
            if verdict.hardware_speed {
                "hardware speed"
            } else {
                "emulated"
            }
        ),
        None => println!("kvm probe:     {}", verdict.reason),
    }
    println!("engine:        {}: {}", choice.label(), choice.reason());
    if let EngineChoice::Kvm {
        hardware_speed: false,
        ..
    } = choice
    {
        eprintln!("nook: warning: KVM runs guest kernels emulated on this host; the kvm engine will be very slow");
    }
    0
}
