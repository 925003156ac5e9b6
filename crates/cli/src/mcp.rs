//! `nook mcp`: the MCP server on stdio (the work is in nook-mcp).

use std::path::PathBuf;

use clap::Args;

use crate::args;
use crate::exit::{self, report};
use crate::run::VmArgs;

/// Largest `--max-output`: 64 MiB (one JSON-RPC message carries it).
const MAX_OUTPUT_LIMIT: u64 = 64 << 20;

#[derive(Args, Debug)]
pub struct McpArgs {
    /// Defaults of every VM the tools boot (engine, memory, CPUs, kernel, network, shares); tool arguments override memory and CPUs.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Most output one tool call returns (stdout and stderr together, or a file's content): bytes, or with K or M; more is dropped and reported as truncated.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_output_size)]
    pub max_output: u64,
    /// Stop a sandbox after this many seconds with no command running (sandbox_create's idle_timeout_s overrides it).
    #[arg(long, value_name = "SECS", default_value_t = nook_mcp::DEFAULT_IDLE_TIMEOUT_S, value_parser = args::parse_whole_seconds)]
    pub idle_timeout: u64,
    /// Let sandbox_create share host directories under DIR into sandboxes (repeatable); without it agents cannot share host directories.
    #[arg(long, value_name = "DIR")]
    pub allow_share: Vec<PathBuf>,
}

/// `1048576`, `64K`, `1M` (binary units), from 1 byte to 64 MiB.
fn parse_output_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1),
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kib" => 1 << 10,
                "m" | "mib" => 1 << 20,
                _ => return Err(format!("`{s}`: give bytes, or a number with K or M")),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: give bytes, or a number with K or M"))?;
    match n.checked_mul(mult) {
        Some(b) if (1..=MAX_OUTPUT_LIMIT).contains(&b) => Ok(b),
        _ => Err(format!("`{s}` is out of range: 1 byte to 64M")),
    }
}

pub fn mcp(args: McpArgs) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    let mut cfg = nook_mcp::McpConfig::new(exe);
    cfg.vm = args.vm.config();
    cfg.vm.progress = false;
    cfg.max_output = args.max_output;
    cfg.idle_timeout_s = args.idle_timeout;
    cfg.allow_share = args.allow_share;
    exit::code(nook_mcp::serve_stdio(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_parse_in_range() {
        assert_eq!(parse_output_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_output_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_output_size("100").unwrap(), 100);
        for bad in ["0", "65M", "1G", "x", "-1", "1.5M"] {
            assert!(parse_output_size(bad).is_err(), "{bad}");
        }
    }
}
