//! The agent's `/metrics` against Prometheus's own tools while pgbench runs
//! against a harness-made PostgreSQL: the exposition passes the reference
//! checkers in both encodings, and a real Prometheus server scraping the
//! agent answers `histogram_quantile(0.99, ...)` for pgbench's statement
//! within 20% of the p99 of pgbench's own per-transaction log.
//! Every server (PostgreSQL, Prometheus, the agent, pgbench) is a guard
//! stopped on drop, so a failing assertion leaves nothing running.

use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use qprof_e2e::{
    TempDir,
    agent::AgentRun,
    pgbench::{PgbenchRun, percentile},
    postgres::PgServer,
    prometheus::{Prometheus, openmetrics_parse, promtool_check_metrics, scrape},
    require_root,
};

/// One test at a time: two pgbench loads on 2 cores would skew each
/// other's latencies.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// 2 s windows: the query series move every 2 s instead of every minute.
const CONFIG: &str = "window = \"2s\"\n";

/// What Prometheus 2.42 sends when it scrapes (it prefers `OpenMetrics`).
const ACCEPT_OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// What a text-only scraper (promtool's own examples with curl) asks.
const ACCEPT_TEXT: &str = "text/plain;version=0.0.4";

/// pgbench's select-only transaction as a one-statement script (so one
/// transaction is one query), with a column alias no other test uses.
fn script(tag: &str) -> String {
    format!(
        "\\set aid random(1, 100000 * :scale)\nSELECT abalance AS qprof_{tag} FROM pgbench_accounts WHERE aid = :aid;\n"
    )
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// PostgreSQL with pgbench's tables, scale 1.
fn pg_with_pgbench_tables(tag: &str) -> PgServer {
    let server = PgServer::start(tag);
    let init = server
        .client("pgbench")
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output()
        .unwrap_or_else(|e| panic!("pgbench -i: {e}"));
    assert!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    server
}

/// The `fingerprint_id` of the statement whose normalized text contains
/// `needle`, from `qprof_query_info` (waits until a window reported it).
fn fingerprint_id(agent: &AgentRun, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let body = agent.get("/metrics").text();
        let found = body
            .lines()
            .filter(|l| l.starts_with("qprof_query_info{") && l.contains(needle))
            .find_map(|l| {
                let rest = l.split("fingerprint_id=\"").nth(1)?;
                Some(rest.split('"').next()?.to_owned())
            });
        if let Some(id) = found {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no qprof_query_info for {needle:?} after {timeout:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Value of the first sample line that starts with `prefix` and contains
/// every one of `parts`.
fn sample(body: &str, prefix: &str, parts: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// promtool passes the text 0.0.4 scrape and the strict `OpenMetrics`
/// parser the `OpenMetrics` one, both taken while pgbench runs, and both
/// hold the pgbench statement's latency histogram with `+Inf` = `_count`.
#[test]
fn live_metrics_pass_promtool_in_both_encodings() {
    require_root();
    let _g = serial();
    let pg = pg_with_pgbench_tables("metrics-lint");
    let dir = TempDir::new("metrics-lint");
    let mut agent = AgentRun::start("metrics-lint", CONFIG, &[]);
    agent.wait_log("queries is on", Duration::from_mins(1));
    let load = ("simple", 2, Duration::from_secs(30));
    let mut bench = PgbenchRun::start(&pg, dir.path(), &script("lint"), load);
    let id = fingerprint_id(&agent, "qprof_lint FROM", Duration::from_secs(20));
    // One more window, so the series have moved at least once since.
    std::thread::sleep(Duration::from_secs(3));
    let url = agent.url("/metrics");
    let (text_type, text) = scrape(&url, ACCEPT_TEXT);
    let (om_type, om) = scrape(&url, ACCEPT_OPENMETRICS);
    assert!(
        bench.running(),
        "pgbench ended before the scrapes: the checks were not taken under load"
    );
    assert!(
        text_type.starts_with("text/plain; version=0.0.4"),
        "{text_type}"
    );
    assert!(
        om_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{om_type}"
    );

    let lint = promtool_check_metrics(&text);
    let lint_out = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    eprintln!(
        "promtool check metrics (text 0.0.4, {} bytes): exit {:?} {lint_out:?}",
        text.len(),
        lint.status.code()
    );
    assert!(
        lint.status.success() && lint_out.trim().is_empty(),
        "promtool check metrics: {lint_out}"
    );
    let parsed = openmetrics_parse(&om);
    let parsed_out = String::from_utf8_lossy(&parsed.stdout);
    eprintln!(
        "OpenMetrics parser ({} bytes): families, samples = {parsed_out}",
        om.len()
    );
    assert!(
        parsed.status.success(),
        "OpenMetrics parser refused the scrape: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );

    for (name, body) in [("text", &text), ("openmetrics", &om)] {
        let body = String::from_utf8_lossy(body);
        let fp = format!("fingerprint_id=\"{id}\"");
        let count = sample(&body, "qprof_query_duration_seconds_count{", &[&fp]);
        let inf = sample(
            &body,
            "qprof_query_duration_seconds_bucket{",
            &[&fp, "le=\"+Inf\""],
        );
        let sum = sample(&body, "qprof_query_duration_seconds_sum{", &[&fp]);
        eprintln!("{name}: pgbench statement {id}: count {count:?}, +Inf {inf:?}, sum {sum:?}");
        assert!(count.is_some_and(|c| c > 100.0), "{name}: count {count:?}");
        assert_eq!(count, inf, "{name}: _count and the +Inf bucket differ");
        // pgbench's select takes tens to hundreds of µs here: a mean
        // outside 5 µs..10 ms would be a unit error.
        let mean = sum.unwrap_or(0.0) / count.unwrap_or(1.0);
        assert!((5e-6..1e-2).contains(&mean), "{name}: mean {mean} s");
    }
    let _ = bench.wait();
}

/// A Prometheus server scraping the agent every second answers
/// `histogram_quantile(0.99, ...)` over 30 s for pgbench's statement within
/// 20% of the p99 of pgbench's own log over the same 30 s.
#[test]
fn prometheus_p99_matches_pgbench_log() {
    require_root();
    let _g = serial();
    let pg = pg_with_pgbench_tables("metrics-prom");
    let dir = TempDir::new("metrics-prom");
    let mut agent = AgentRun::start("metrics-prom", CONFIG, &[]);
    agent.wait_log("queries is on", Duration::from_mins(1));
    let target = format!("127.0.0.1:{}", agent.port);
    let prom = Prometheus::start("metrics", &target, Duration::from_secs(1));
    let load = ("simple", 2, Duration::from_secs(45));
    let mut bench = PgbenchRun::start(&pg, dir.path(), &script("prom"), load);
    let id = fingerprint_id(&agent, "qprof_prom FROM", Duration::from_secs(20));
    let _ = bench.wait();
    let end = now_unix();
    // The last window is written within 2 s of the end and scraped within
    // 1 s more; evaluate after that, and query once Prometheus has it.
    let at = end + 4.0;
    std::thread::sleep(Duration::from_secs_f64((at + 1.5 - now_unix()).max(0.0)));

    let sel = format!("qprof_query_duration_seconds_bucket{{fingerprint_id=\"{id}\"}}");
    let expr = format!("histogram_quantile(0.99, sum by (le) (rate({sel}[30s])))");
    let prom_p99 = prom.scalar_at(&expr, at);
    let count_expr = format!(
        "sum(increase(qprof_query_duration_seconds_count{{fingerprint_id=\"{id}\"}}[30s]))"
    );
    let prom_count = prom.scalar_at(&count_expr, at);
    let health = prom.target_health();
    assert!(
        health.iter().all(|(h, e)| h == "up" && e.is_empty()) && !health.is_empty(),
        "scrape target not healthy: {health:?}\n{}",
        prom.log()
    );
    // Prometheus parsed the OpenMetrics encoding: in the text format the
    // family would be the gauge `qprof_query_info`, not the info `qprof_query`.
    let meta = prom.api("/api/v1/metadata", &[("metric", "qprof_query")]);
    assert_eq!(meta["qprof_query"][0]["type"], "info", "{meta}");

    // The same 30 s of pgbench's log: the samples in (at - 30, at] hold
    // windows written in that span, each covering the 2 s before it.
    let window: Vec<_> = bench
        .transactions()
        .into_iter()
        .filter(|t| t.end > at - 32.0 && t.end <= at)
        .collect();
    let mut lat: Vec<f64> = window.iter().map(|t| t.latency_us).collect();
    lat.sort_by(f64::total_cmp);
    let (pg_p50, pg_p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let prom_p99_us = prom_p99.unwrap_or(f64::NAN) * 1e6;
    eprintln!(
        "pgbench: {} transactions in the window, p50 {pg_p50:.0} us, p99 {pg_p99:.0} us; \
         Prometheus: increase(_count) {prom_count:?}, p99 {prom_p99_us:.1} us ({:+.1}%)",
        lat.len(),
        (prom_p99_us - pg_p99) / pg_p99 * 100.0
    );
    assert!(
        lat.len() > 1000,
        "pgbench logged {} transactions",
        lat.len()
    );
    let prom_count = prom_count.unwrap_or(0.0);
    assert!(
        (prom_count - lat.len() as f64).abs() <= 0.25 * lat.len() as f64,
        "the windows do not line up: Prometheus counted {prom_count}, pgbench {}",
        lat.len()
    );
    assert!(
        (prom_p99_us - pg_p99).abs() <= 0.2 * pg_p99,
        "Prometheus p99 {prom_p99_us:.1} us vs pgbench p99 {pg_p99:.0} us"
    );
}
