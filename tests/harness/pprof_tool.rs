//! `go tool pprof`, the reference reader of pprof files: if it cannot parse
//! a profile, nothing downstream (Pyroscope, Grafana) will either.

use std::{collections::HashMap, path::Path, process::Command};

/// Output of `go tool pprof -top` over every node, for one sample index.
#[must_use]
pub fn top(profile: &Path, sample_index: &str) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=100000"])
        .arg(format!("-sample_index={sample_index}"))
        .arg(profile)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("running go tool pprof (apt-get install golang-go): {e}"));
    assert!(
        out.status.success(),
        "go tool pprof rejected {}: {}",
        profile.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cumulative values per function name from `-top` output (the time
/// spent in a function and everything it called).
#[must_use]
pub fn cum_by_function(top_output: &str) -> HashMap<String, f64> {
    column_by_function(top_output, 3)
}

/// Flat values per function name from `-top` output ("flat flat% sum% cum
/// cum% name" rows). Values keep pprof's printed unit (counts for
/// `samples`).
#[must_use]
pub fn flat_by_function(top_output: &str) -> HashMap<String, f64> {
    column_by_function(top_output, 0)
}

fn column_by_function(top_output: &str, column: usize) -> HashMap<String, f64> {
    let mut flat = HashMap::new();
    for line in top_output.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 || !cols[1].ends_with('%') || !cols[4].ends_with('%') {
            continue;
        }
        let Some(value) = parse_value(cols[column]) else {
            continue;
        };
        let name = cols[5..].join(" ");
        *flat.entry(name).or_insert(0.0) += value;
    }
    flat
}

/// "123", "1.5s", "20ms" -> a number (seconds for time units).
fn parse_value(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        "mins" => 60.0,
        _ => return None,
    };
    Some(n * scale)
}
