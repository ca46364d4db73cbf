//! Shared report plumbing for `record` commands: JSON to a file or stdout,
//! fixed-width tables, human-readable durations.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use crate::export::files;

/// `-` means stdout.
#[must_use]
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Checks a `--json` target before the capture starts.
pub fn check_json_target(path: &Path) -> anyhow::Result<()> {
    if !is_stdout(path) {
        files::check_writable(path)?;
    }
    Ok(())
}

/// Writes `rows` as a pretty JSON array to `path` (or stdout for `-`).
pub fn write_json<T: Serialize>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(rows).context("encoding JSON")?;
    text.push('\n');
    if is_stdout(path) {
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing JSON to stdout")?;
    } else {
        files::write_private(path, text.as_bytes())?;
        eprintln!("qprof: wrote {}", path.display());
    }
    Ok(())
}

/// 950ns, 12.3µs, 4.56ms, 1.23s: three significant digits at most.
#[must_use]
pub fn human_ns(ns: u64) -> String {
    let ns = ns as f64;
    let (value, unit) = if ns < 1e3 {
        return format!("{ns:.0}ns");
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if value < 10.0 {
        format!("{value:.2}{unit}")
    } else if value < 100.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// Left-aligned text columns with a header; widths fit the content.
#[must_use]
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations pick a unit and keep three significant digits.
    #[test]
    fn human_durations() {
        assert_eq!(human_ns(950), "950ns");
        assert_eq!(human_ns(12_345), "12.3µs");
        assert_eq!(human_ns(4_560_000), "4.56ms");
        assert_eq!(human_ns(123_000_000_000), "123s");
    }

    /// Columns align to the widest cell.
    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
