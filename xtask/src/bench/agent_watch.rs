//! Readings of a running `qprof agent` taken from outside, as an operator
//! would take them: `/proc` for its memory, `fdinfo` for its BPF maps and
//! programs, HTTP for a `/metrics` scrape.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Resident memory (`VmRSS`) of a process, in MiB.
pub fn rss_mib(pid: i32) -> anyhow::Result<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib / 1024.0)
}

/// Peak resident memory (`VmHWM`) of a process, in MiB.
pub fn peak_rss_mib(pid: i32) -> anyhow::Result<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: i32, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Where a process's resident memory is, in MiB: anonymous (heap and
/// stacks), mapped BPF maps (ring buffers), other file mappings (its
/// binary, libraries, files it maps to read, e.g. to symbolize).
#[derive(Debug, Clone, Copy, Default)]
pub struct RssParts {
    pub anon: f64,
    pub bpf_maps: f64,
    pub files: f64,
}

/// Sums the `Rss:` of every mapping in `/proc/<pid>/smaps` by kind.
pub fn rss_parts(pid: i32) -> anyhow::Result<RssParts> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(parse_rss_parts(&text))
}

fn parse_rss_parts(text: &str) -> RssParts {
    let mut parts = RssParts::default();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let mib = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .unwrap_or(0.0)
                / 1024.0;
            match name.as_str() {
                "anon_inode:bpf-map" => parts.bpf_maps += mib,
                n if n.starts_with('/') => parts.files += mib,
                _ => parts.anon += mib,
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping's header: range perms offset dev inode [name].
            name.clear();
            name.push_str(line.split_whitespace().nth(5).unwrap_or_default());
        }
    }
    parts
}

/// One BPF program the process holds, with the kernel's run statistics
/// (zero unless `kernel.bpf_stats_enabled` was on while it ran).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub prog_type: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF objects a process holds, from `/proc/<pid>/fdinfo`.
#[derive(Debug, Default)]
pub struct BpfHeld {
    /// Distinct maps (by map id).
    pub maps: usize,
    /// Sum of `memlock:` over the distinct maps: the kernel memory they
    /// lock (what `RLIMIT_MEMLOCK` or the memory cgroup is charged).
    pub map_memlock: u64,
    /// Programs by program id (link fds also name a `prog_id`; only
    /// program fds carry `run_time_ns`, so each program counts once).
    pub progs: BTreeMap<u32, ProgStats>,
}

/// Reads every `fdinfo` of `pid`; a map or program held by several
/// descriptors counts once.
pub fn bpf_held(pid: i32) -> anyhow::Result<BpfHeld> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?;
    let mut held = BpfHeld::default();
    let mut maps = BTreeMap::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, memlock);
        } else if let (Some(id), Some(run_time_ns)) = (field("prog_id:"), field("run_time_ns:")) {
            held.progs.insert(
                u32::try_from(id).unwrap_or(u32::MAX),
                ProgStats {
                    prog_type: field("prog_type:").map_or(0, |t| t as u32),
                    run_time_ns,
                    run_cnt: field("run_cnt:").unwrap_or(0),
                },
            );
        }
    }
    held.maps = maps.len();
    held.map_memlock = maps.values().sum();
    Ok(held)
}

/// The name of a `bpf_prog_type` (uapi `enum bpf_prog_type`) for the types
/// qprof uses.
pub fn prog_type_name(t: u32) -> String {
    match t {
        2 => "kprobe (uprobes)".to_owned(),
        5 => "tracepoint".to_owned(),
        7 => "perf_event".to_owned(),
        17 => "raw_tracepoint".to_owned(),
        26 => "tracing (BTF tracepoint)".to_owned(),
        other => format!("type {other}"),
    }
}

/// Run time and runs per program type between two readings (programs
/// present in both).
pub fn run_time_by_type(before: &BpfHeld, after: &BpfHeld) -> BTreeMap<String, (Duration, u64)> {
    let mut by_type: BTreeMap<String, (Duration, u64)> = BTreeMap::new();
    for (id, now) in &after.progs {
        let Some(then) = before.progs.get(id) else {
            continue;
        };
        let entry = by_type.entry(prog_type_name(now.prog_type)).or_default();
        entry.0 += Duration::from_nanos(now.run_time_ns.saturating_sub(then.run_time_ns));
        entry.1 += now.run_cnt.saturating_sub(then.run_cnt);
    }
    by_type
}

/// One `/metrics` scrape.
#[derive(Debug, Clone, Copy)]
pub struct Scrape {
    /// HTTP round trip: connect, request, the whole body read.
    pub elapsed: Duration,
    /// Sample lines (every line that is neither blank nor a `#` comment):
    /// what Prometheus stores as series.
    pub series: usize,
    pub bytes: usize,
}

/// What Prometheus 2 sends: `OpenMetrics` preferred, text 0.0.4 accepted.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes `/metrics` once over a fresh connection, as Prometheus does.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let started = Instant::now();
    let response = ureq::get(&format!("http://{addr}/metrics"))
        .set("Accept", ACCEPT)
        .timeout(Duration::from_secs(30))
        .call()
        .context("scraping /metrics")?;
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .context("reading the scrape")?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&body);
    if !text.contains("# TYPE") {
        bail!(
            "/metrics returned no metrics: {}",
            &text[..text.len().min(200)]
        );
    }
    Ok(Scrape {
        elapsed,
        series: count_series(&text),
        bytes: body.len(),
    })
}

fn count_series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

/// Least-squares slope of `(seconds, value)` points, per second.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each mapping's Rss lands in its kind: unnamed and `[heap]` are
    /// anonymous, BPF map mappings and files apart.
    #[test]
    fn splits_rss_by_mapping_kind() {
        let smaps = "55d0-55e0 r-xp 00000000 fd:01 12 /usr/bin/qprof\nRss:                 100 kB\n\
                     VmFlags: rd ex\n7f00-7f10 rw-p 00000000 00:00 0 \nRss:                2048 kB\n\
                     7f20-7f30 r--s 00000000 00:0f 9 anon_inode:bpf-map\nRss:                1024 kB\n\
                     7f40-7f50 rw-p 00000000 00:00 0 [heap]\nRss:                1024 kB\n";
        let p = parse_rss_parts(smaps);
        assert!((p.anon - 3.0).abs() < 1e-9, "{p:?}");
        assert!((p.bpf_maps - 1.0).abs() < 1e-9, "{p:?}");
        assert!((p.files - 100.0 / 1024.0).abs() < 1e-9, "{p:?}");
    }

    /// Comments, `# EOF` and blank lines are not series; every sample line is.
    #[test]
    fn counts_sample_lines_only() {
        let text = "# HELP a x\n# TYPE a counter\na_total{k=\"v\"} 1\na_total 2\n\n# EOF\n";
        assert_eq!(count_series(text), 2);
    }

    /// The slope of points on a line is that line's; flat points give 0.
    #[test]
    fn least_squares_slope() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 + 0.5 * f64::from(i)))
            .collect();
        assert!((slope(&line) - 0.5).abs() < 1e-9);
        assert!(slope(&[(0.0, 7.0), (5.0, 7.0), (9.0, 7.0)]).abs() < 1e-12);
        assert!(slope(&[(1.0, 2.0)]).abs() < 1e-12);
    }
}
