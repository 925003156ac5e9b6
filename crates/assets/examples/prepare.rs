//! Prepares guest assets and prints them as JSON: a manual check of the
//! cache and the progress bars.
//!
//! ```text
//! cargo run -p nook-assets --example prepare -- AGENT [--refresh] [--kernel FILE [--modules-dir DIR]] [MODULE...]
//! ```
//! `NOOK_HOME` selects the cache; `RUST_LOG`-style filtering is not wired
//! up: set `NOOK_ASSETS_DEBUG=1` to see the debug events.

use std::path::PathBuf;
use std::time::Instant;

use nook_assets::{prepare, refresh, AssetsConfig, KernelSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("NOOK_ASSETS_DEBUG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let agent = args.next().ok_or(
        "usage: prepare AGENT [--refresh] [--kernel FILE [--modules-dir DIR]] [MODULE...]",
    )?;
    let mut cfg = AssetsConfig::new(agent);
    let mut do_refresh = false;
    let mut modules = Vec::new();
    let (mut kernel, mut modules_dir) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--refresh" => do_refresh = true,
            "--kernel" => kernel = args.next().map(PathBuf::from),
            "--modules-dir" => modules_dir = args.next().map(PathBuf::from),
            _ => modules.push(arg),
        }
    }
    if let Some(kernel) = kernel {
        cfg.kernel = KernelSource::Local {
            kernel,
            modules_dir,
        };
    }
    if !modules.is_empty() {
        cfg.modules = modules;
    }
    let started = Instant::now();
    let assets = if do_refresh {
        refresh(&cfg)?
    } else {
        prepare(&cfg)?
    };
    let elapsed = started.elapsed();
    println!("{}", serde_json::to_string_pretty(&assets)?);
    eprintln!("{:?} in {elapsed:?}", assets.work);
    Ok(())
}
