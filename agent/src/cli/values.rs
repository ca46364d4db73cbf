//! Parsers for command-line values, each with an error that says what a
//! good value looks like.

use std::time::Duration;

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds; must be > 0.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!("invalid duration '{text}': expected a number and a unit (ms, s, m, h), e.g. 10s")
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 7.0 * 86_400.0 {
        return Err(format!("invalid duration '{text}': at most 7 days"));
    }
    if seconds < 0.001 {
        return Err(format!("invalid duration '{text}': must be at least 1ms"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A minimum block time: `0`, or a duration with a unit (`us` allowed).
pub fn parse_min_block(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("invalid --min-block '{text}': expected e.g. 500us, 1ms, 0");
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if let Some(us) = t.strip_suffix("us") {
        return us
            .parse::<u64>()
            .map(Duration::from_micros)
            .map_err(|_| bad());
    }
    parse_duration(t).map_err(|_| bad())
}

/// A fingerprint id: 16 hex digits (as `record queries` prints them).
pub fn parse_fingerprint_id(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(format!(
            "invalid --query '{text}': expected a fingerprint id of 16 hex digits, as in `record queries` output"
        ))
    }
}

/// A process id: a positive integer (existence is checked before sampling).
pub fn parse_pid(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("invalid pid '{text}': expected a positive integer")),
        Ok(pid) => Ok(pid),
    }
}

/// A sampling rate: a positive integer (the kernel's maximum is checked
/// before sampling, since it is a runtime setting).
pub fn parse_hz(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("invalid --hz 0: the sampling rate must be at least 1".to_owned()),
        Ok(hz) => Ok(hz),
        Err(_) => Err(format!(
            "invalid --hz '{text}': expected a positive integer"
        )),
    }
}

/// A process name as the kernel keeps it: 1 to 15 bytes, no NUL or '/'.
pub fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 || text.contains(['\0', '/']) {
        return Err(format!(
            "invalid --comm '{text}': a process name is 1 to 15 bytes (the kernel truncates comm to 15), without '/' or NUL"
        ));
    }
    Ok(text.to_owned())
}

/// Row count for tables: at least 1.
pub fn parse_top(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "invalid --top '{text}': expected a positive integer"
        )),
        Ok(n) => Ok(n),
    }
}

/// The kernel's limit on sampling rates (`kernel.perf_event_max_sample_rate`).
#[must_use]
pub fn max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit parses and scales.
    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    /// Zero, garbage, unknown units and absurd values are refused with a hint.
    #[test]
    fn bad_durations_are_refused() {
        for bad in ["0", "0s", "", "abc", "10x", "-1s", "s", "1e400s", "9999h"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    /// Minimum block times accept 0 and microseconds; garbage is refused.
    #[test]
    fn min_blocks() {
        assert_eq!(parse_min_block("0"), Ok(Duration::ZERO));
        assert_eq!(parse_min_block("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_min_block("2ms"), Ok(Duration::from_millis(2)));
        assert!(
            parse_min_block("fast")
                .expect_err("garbage")
                .contains("invalid --min-block")
        );
        assert!(parse_min_block("-1us").is_err());
    }

    /// Pids and rates must be positive integers.
    #[test]
    fn pids_and_rates() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("0").is_err() && parse_pid("-3").is_err() && parse_pid("x").is_err());
        assert_eq!(parse_hz("99"), Ok(99));
        assert!(parse_hz("0").expect_err("0").contains("at least 1"));
        assert!(parse_hz("fast").is_err());
    }
}
