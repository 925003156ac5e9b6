//! Numeric options are checked when the command line is parsed, against
//! the range they allow, so a bad value is a usage error (exit 2, with the
//! range in the message) before anything starts.

use std::time::Duration;

/// The longest duration an option takes: ten years.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// A number of seconds, fractions allowed: finite, more than 0, at most
/// ten years (`inf`, `nan`, `0` and `-1` are refused).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(format!(
            "`{s}` is out of range: give seconds greater than 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Whole seconds, at least 1 and at most ten years.
pub fn parse_whole_seconds(s: &str) -> Result<u64, String> {
    let secs: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of seconds"))?;
    if secs == 0 || secs as f64 > MAX_SECONDS {
        return Err(format!(
            "`{s}` is out of range: give 1 to {MAX_SECONDS} seconds"
        ));
    }
    Ok(secs)
}

/// Guest memory in MiB: at least 64, at most this host's RAM.
pub fn parse_memory_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of MiB"))?;
    nook::check_memory(mib).map_err(|e| e.to_string())?;
    Ok(mib)
}

/// A vCPU count: 1 to 255 here; the engine's own limit is checked once the
/// engine is known ([`check_vcpus`]).
pub fn parse_vcpus(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{s}` is out of range: give 1 to {} vCPUs",
            nook::vcpu_limit(nook::EngineKind::Qemu)
        )),
    }
}

/// The engine's vCPU limit, as a usage error (exit 2) when passed.
pub fn check_vcpus(vcpus: u8, engine: nook::EngineKind) {
    if let Err(e) = nook::check_vcpus(vcpus, engine) {
        use clap::CommandFactory;
        crate::Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                match engine {
                    nook::EngineKind::Auto => format!(
                        "invalid value for '--cpus <N>': {e} (auto may choose it): use --engine qemu for more"
                    ),
                    _ => format!("invalid value for '--cpus <N>': {e}"),
                },
            )
            .exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_finite_and_positive() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["inf", "nan", "0", "-1", "", "1e30", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_whole_seconds("120").unwrap(), 120);
        for bad in ["0", "-1", "1.5", "99999999999999"] {
            assert!(parse_whole_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_and_vcpus_have_ranges() {
        assert_eq!(parse_memory_mib("256").unwrap(), 256);
        assert!(parse_memory_mib("63").is_err());
        let beyond = (nook::memory_limit_mib() + 1).to_string();
        assert!(parse_memory_mib(&beyond)
            .unwrap_err()
            .contains("host's RAM"));
        assert_eq!(parse_vcpus("2").unwrap(), 2);
        for bad in ["0", "256", "-1", "two"] {
            assert!(parse_vcpus(bad).is_err(), "{bad}");
        }
    }
}
