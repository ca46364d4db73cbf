//! `qprof record queries`: every query run through libpq or libsqlite3,
//! grouped by normalized statement, with latency percentiles.

use anyhow::Context as _;

use super::{RecordQueriesArgs, capture_loop, checks, report};
use crate::{
    aggregate::queries::QueryRow,
    probes::{
        component::Component as _,
        queries::{QueryOptions, QueryTracer, QueryWindow},
    },
};

pub fn run(args: &RecordQueriesArgs) -> anyhow::Result<()> {
    checks::pids_exist(&args.pids)?;
    if let Some(path) = &args.json {
        report::check_json_target(path)?;
    }
    checks::privileges_and_kernel()?;
    let mut tracer = QueryTracer::start(&QueryOptions {
        pids: args.pids.clone(),
        raw_queries: args.raw_queries,
    })
    .context("starting the query tracer")?;
    for warning in tracer.take_warnings() {
        eprintln!("qprof: {warning}");
    }
    let (window, ended) = capture_loop::record(tracer, args.duration, "queries")?;
    let rows = window.table.report_rows(&window.examples);
    match &args.json {
        Some(path) => report::write_json(path, &rows)?,
        None => print!("{}", render(&rows, args.top)),
    }
    for warning in &window.warnings {
        eprintln!("qprof: {warning}");
    }
    summarize(&window, ended.elapsed);
    Ok(())
}

fn summarize(w: &QueryWindow, elapsed: std::time::Duration) {
    let (c, libpq, sqlite) = (&w.counters, &w.libpq_files, w.sqlite_files);
    eprintln!(
        "qprof: {} executions of {} statements in {:.1}s; libpq: {}; SQLite: {sqlite} file(s)",
        c.executions,
        w.table.len(),
        elapsed.as_secs_f64(),
        if libpq.is_empty() {
            "not found in any process".to_owned()
        } else {
            libpq.join(", ")
        }
    );
    if !w.libssl_files.is_empty() {
        eprintln!(
            "qprof: TLS plaintext read through {}",
            w.libssl_files.join(", ")
        );
    }
    for line in crate::probes::queries::unfollowed::describe(&c.unfollowed) {
        eprintln!("qprof: {line}");
    }
    if w.table.evicted() > 0 {
        eprintln!(
            "qprof: {} least-used statements were evicted ({} calls)",
            w.table.evicted(),
            w.table.evicted_calls()
        );
    }
    if c.unknown_text > 0 {
        eprintln!("qprof: {} executions had no known text", c.unknown_text);
    }
    let mut lost: Vec<String> = c
        .kernel_drops
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    for (name, value) in [
        ("malformed_events", c.malformed_records),
        ("failed_library_scans", c.failed_library_scans),
        ("query_texts_evicted", c.texts_evicted),
    ] {
        if value > 0 {
            lost.push(format!("{name}={value}"));
        }
    }
    if !lost.is_empty() {
        eprintln!("qprof: some data was degraded or lost: {}", lost.join(", "));
    }
}

/// The `record queries` table: the `top` rows (already sorted), one line
/// per statement. `qprof top` prints the agent's rows with it.
pub(crate) fn render<R: AsRef<QueryRow>>(rows: &[R], top: usize) -> String {
    let us = |v: f64| report::human_ns((v * 1000.0) as u64);
    let body: Vec<Vec<String>> = rows
        .iter()
        .take(top)
        .map(|r| {
            let r = r.as_ref();
            let mut text: String = r.fingerprint.chars().take(70).collect();
            if r.fingerprint.chars().count() > 70 {
                text.push('…');
            }
            vec![
                r.fingerprint_id.clone(),
                r.db.to_string(),
                r.calls.to_string(),
                r.errors.to_string(),
                us(r.p50_us),
                us(r.p95_us),
                us(r.p99_us),
                us(r.max_us),
                us(r.total_us),
                text,
            ]
        })
        .collect();
    report::table(
        &[
            "ID",
            "DB",
            "CALLS",
            "ERRORS",
            "P50",
            "P95",
            "P99",
            "MAX",
            "TOTAL",
            "FINGERPRINT",
        ],
        &body,
    )
}
