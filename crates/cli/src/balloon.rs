//! `nook balloon NAME [SIZE]`: sets a session's memory balloon and shows
//! its memory (the work is in nook-serve and nook).

use clap::Args;
use nook_serve::SessionClient;

use crate::exit::{self, report};

#[derive(Args, Debug)]
pub struct BalloonArgs {
    /// Print the memory statistics as JSON.
    #[arg(long)]
    pub json: bool,
    /// The session (started with --balloon).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Memory to take from the guest into the balloon: MiB, or with a unit (256M, 1G); 0 gives it all back. Without it, only show the memory.
    #[arg(value_name = "SIZE", value_parser = parse_balloon_mib)]
    pub size: Option<u32>,
}

/// A balloon size: plain MiB, or a size with a unit, in whole MiB.
pub fn parse_balloon_mib(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if let Ok(mib) = t.parse::<u32>() {
        return Ok(mib);
    }
    let bytes = crate::image::parse_size(t)?;
    u32::try_from(bytes >> 20).map_err(|_| format!("balloon size `{s}` is too large"))
}

pub fn balloon(args: BalloonArgs) -> i32 {
    let client = match SessionClient::open(&nook::default_home(), &args.name) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if let Some(mib) = args.size {
        if let Err(e) = client.set_balloon(mib) {
            report(&e);
            return exit::NOOK_FAILED;
        }
    }
    let stats = match client.memory_stats() {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
        return 0;
    }
    let mib = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{} MiB", b >> 20));
    println!("memory:          {} MiB", stats.memory_mib);
    println!("balloon:         {} MiB", stats.balloon_mib);
    if let Some(target) = args.size {
        println!("balloon target:  {target} MiB (the guest inflates at its own pace)");
    }
    println!("guest total:     {}", mib(stats.guest_total_bytes));
    println!("guest free:      {}", mib(stats.guest_free_bytes));
    println!("guest available: {}", mib(stats.guest_available_bytes));
    println!("host rss:        {}", mib(stats.host_rss_bytes));
    0
}

/// The MEMORY column of `nook ps`: the configured memory, or with a balloon
/// what the guest has left of it (`384/512Mi`).
pub fn memory_column(memory_mib: u32, stats: Option<&nook::MemoryStats>) -> String {
    match stats {
        Some(s) if s.balloon_mib > 0 => format!(
            "{}/{memory_mib}Mi",
            memory_mib.saturating_sub(s.balloon_mib)
        ),
        _ => format!("{memory_mib}Mi"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_mib_or_units() {
        assert_eq!(parse_balloon_mib("0").unwrap(), 0);
        assert_eq!(parse_balloon_mib("300").unwrap(), 300);
        assert_eq!(parse_balloon_mib("1G").unwrap(), 1024);
        assert_eq!(parse_balloon_mib("256M").unwrap(), 256);
        assert!(parse_balloon_mib("lots").is_err());
        assert!(parse_balloon_mib("-1").is_err());
    }

    #[test]
    fn the_memory_column_shows_what_the_balloon_left() {
        assert_eq!(memory_column(512, None), "512Mi");
        let mut s = nook::MemoryStats {
            memory_mib: 512,
            ..Default::default()
        };
        assert_eq!(memory_column(512, Some(&s)), "512Mi");
        s.balloon_mib = 128;
        assert_eq!(memory_column(512, Some(&s)), "384/512Mi");
    }
}
