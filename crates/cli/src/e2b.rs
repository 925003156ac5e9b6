//! `nook serve --e2b`: the E2B-compatible API on loopback (crates/e2b),
//! instead of the daemon's Unix socket.

use std::io::Write;
use std::net::SocketAddr;

use clap::Args;

use crate::exit::{self, report};

/// The options of `nook serve --e2b` (flattened into `nook serve`'s).
#[derive(Args, Debug)]
pub struct E2bArgs {
    /// Serve the E2B-compatible API (control plane and envd over HTTP/1.1): E2B SDKs reach it with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (printed at start). See docs/e2b.md.
    #[arg(long)]
    pub e2b: bool,
    /// With --e2b: the address to listen on (port 0 picks a free one).
    #[arg(long, default_value = nook_e2b::DEFAULT_LISTEN, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// With --e2b: the API key E2B clients must send; default: NOOK_E2B_API_KEY, else one generated and kept in $NOOK_HOME/e2b/api-key.
    #[arg(long, env = nook_e2b::API_KEY_ENV, value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With --e2b: the nook image behind templateID `base` (built from Debian bookworm with python3 when missing).
    #[arg(long, default_value = nook_e2b::DEFAULT_BASE_IMAGE, value_name = "IMAGE")]
    pub base_image: String,
    /// With --e2b: guest memory of each sandbox in MiB.
    #[arg(long = "memory", default_value_t = 512, value_name = "MIB", value_parser = crate::args::parse_memory_mib)]
    pub memory_mib: u32,
    /// With --e2b: vCPUs of each sandbox.
    #[arg(long = "cpus", default_value_t = 1, value_name = "N", value_parser = crate::args::parse_vcpus)]
    pub vcpus: u8,
    /// With --e2b: do not boot the base template at start (the first create then boots and makes its snapshot).
    #[arg(long)]
    pub no_warm: bool,
}

/// Serves the E2B-compatible API with sandboxes on `engine`.
pub fn serve(args: &E2bArgs, engine: &str) -> i32 {
    let home = nook::default_home();
    let api_key = match nook_e2b::api_key(&home, args.api_key.clone()) {
        Ok(k) => k,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let vm = nook::VmConfig::default();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let cfg = nook_e2b::E2bConfig {
        home,
        exe,
        listen: args.listen,
        api_key,
        engine: engine.to_string(),
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        kernel: vm.kernel.clone(),
        agent: vm.agent.clone(),
        boot_timeout_s: 120,
        base_image: args.base_image.clone(),
    };
    let server = match nook_e2b::Server::bind(cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    // Before any request, and before the base image build and template
    // boot start threads of their own.
    if let Err(e) = nook_serve::harden_daemon() {
        report(&e);
        return exit::NOOK_FAILED;
    }
    let prepared = cfg
        .ensure_base_image(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .and_then(|()| {
            if args.no_warm {
                Ok(())
            } else {
                nook_e2b::warm_template(&cfg).map(|t| {
                    eprintln!(
                        "nook serve: base template ready in {:.1} s",
                        t.as_secs_f64()
                    );
                })
            }
        });
    if let Err(e) = prepared {
        report(&e);
        return exit::NOOK_FAILED;
    }
    let addr = match server.local_addr() {
        Ok(a) => a,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "E2B_API_URL=http://{addr}\nE2B_SANDBOX_URL=http://{addr}\nE2B_API_KEY={}",
        cfg.api_key
    );
    let _ = out.flush();
    drop(out);
    eprintln!(
        "nook serve: E2B-compatible API on http://{addr} (Ctrl-C stops it and kills its sandboxes)"
    );
    match nook_e2b::serve(server) {
        Ok(()) => 0,
        Err(e) => {
            report(&e);
            exit::NOOK_FAILED
        }
    }
}
