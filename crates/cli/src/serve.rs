//! `nook serve`: the daemon (the work is in nook-serve's `daemon` module).

use clap::Args;
use nook_serve::daemon::BetaImage;

use crate::exit::{self, report};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The Unix socket to serve (created 0600; its directory 0700 when nook creates it).
    /// Default: $NOOK_SOCKET, else $NOOK_HOME/serve.sock. Clients find it through NOOK_SOCKET.
    #[arg(long, value_name = "PATH", env = "NOOK_SOCKET")]
    pub socket: Option<std::path::PathBuf>,
    /// Engine of the sessions the daemon creates: auto, qemu or kvm.
    #[arg(long, default_value = "auto", value_name = "ENGINE")]
    pub engine: String,
    /// Image that devshell-vm sidecar sessions boot (a reference, pulled when missing), or
    /// `builtin` for nook's built-in minimal root (a shell, no cargo). Default: a Debian
    /// image with cargo and a C linker, built on first use and cached.
    #[arg(long, value_name = "REF")]
    pub beta_image: Option<String>,
    /// Warm sessions the pool keeps per configuration (pool_acquire).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pool_size: usize,
    /// Stop (as on SIGTERM) once no client has been connected for SECONDS and no session
    /// created with `keep` runs. The Python SDK starts its own daemon with this.
    #[arg(long, value_name = "SECONDS")]
    pub idle_exit: Option<u64>,
    #[command(flatten)]
    pub e2b: crate::e2b::E2bArgs,
}

pub fn serve(args: ServeArgs) -> i32 {
    if let Err(e) = args.engine.parse::<nook::EngineKind>() {
        eprintln!("nook: --engine: {e}");
        return exit::USAGE;
    }
    if args.e2b.e2b {
        return crate::e2b::serve(&args.e2b, &args.engine);
    }
    let home = nook::default_home();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let beta_image = match args.beta_image.as_deref() {
        Some("builtin") => BetaImage::Builtin,
        Some(reference) => {
            if let Err(e) = crate::image::resolve_image(reference, false) {
                report(&e);
                return exit::NOOK_FAILED;
            }
            BetaImage::Image(reference.to_string())
        }
        None => BetaImage::RustToolchain,
    };
    let cfg = nook_serve::daemon::DaemonConfig {
        socket: args
            .socket
            .unwrap_or_else(|| nook_serve::daemon::default_socket(&home)),
        home,
        exe,
        engine: args.engine,
        beta_image,
        pool_size: args.pool_size,
        idle_exit: args.idle_exit.map(std::time::Duration::from_secs),
    };
    match nook_serve::daemon::serve(cfg) {
        Ok(()) => 0,
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}
