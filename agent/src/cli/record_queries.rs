//! `qprof record queries`: every query run through libpq or libsqlite3,
//! grouped by normalized statement, with latency percentiles.

use std::collections::HashMap;

use anyhow::Context as _;
use serde::Serialize;

use super::{RecordQueriesArgs, capture_loop, checks, report};
use crate::{
    aggregate::{
        fingerprint::{Normalized, normalize, normalize_captured},
        queries::{Db, QueryRow, QueryTable},
    },
    probes::queries::{QueryOptions, QueryTracer, events::QueryEvent},
};

/// Texts remembered by id: twice the kernel's own "already sent" table, so
/// a text the kernel still considers sent is still known here. Past it the
/// oldest half is dropped (their executions report as unknown text).
const MAX_TEXTS: usize = 131_072;

/// A query row, plus one raw example when `--raw-queries` asked for it.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    row: QueryRow,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_example: Option<String>,
}

/// What the capture learned, fed by the event stream.
struct Collector {
    raw: bool,
    table: QueryTable,
    /// text id -> (normalized, raw text when opted in).
    texts: HashMap<u64, (Normalized, Option<String>)>,
    /// fingerprint id -> one raw text (opt-in only).
    examples: HashMap<u64, String>,
    executions: u64,
    unknown_text: u64,
}

impl Collector {
    fn new(raw: bool) -> Self {
        Self {
            raw,
            table: QueryTable::default(),
            texts: HashMap::new(),
            examples: HashMap::new(),
            executions: 0,
            unknown_text: 0,
        }
    }

    fn on_event(&mut self, ev: QueryEvent) {
        match ev {
            QueryEvent::Text {
                text_id,
                bytes,
                truncated,
                ..
            } => {
                if self.texts.len() >= MAX_TEXTS {
                    let drop: Vec<u64> = self.texts.keys().take(MAX_TEXTS / 2).copied().collect();
                    for k in drop {
                        self.texts.remove(&k);
                    }
                }
                let raw = self
                    .raw
                    .then(|| String::from_utf8_lossy(&bytes).into_owned());
                self.texts
                    .insert(text_id, (normalize_captured(&bytes, truncated), raw));
            }
            QueryEvent::Done(done) => {
                self.executions += 1;
                let db = if done.db == qprof_common::queries::DB_SQLITE {
                    Db::Sqlite
                } else {
                    Db::Postgres
                };
                let (normalized, raw) = if let Some((n, raw)) = self.texts.get(&done.text_id) {
                    (n.clone(), raw.clone())
                } else {
                    self.unknown_text += 1;
                    let what: &[u8] = if done.text_id == 0 {
                        b"<prepared before the capture started: text unknown>"
                    } else {
                        b"<text not captured>"
                    };
                    (normalize(what), None)
                };
                if let Some(raw) = raw {
                    self.examples.entry(normalized.id).or_insert(raw);
                }
                let rows = (done.rows != u64::MAX).then_some(done.rows);
                self.table.record(
                    db,
                    &normalized,
                    done.latency_ns,
                    done.error != 0,
                    rows,
                    done.pid,
                );
            }
        }
    }
}

pub fn run(args: &RecordQueriesArgs) -> anyhow::Result<()> {
    checks::pids_exist(&args.pids)?;
    if let Some(path) = &args.json {
        report::check_json_target(path)?;
    }
    checks::privileges_and_kernel()?;
    let (mut ebpf, mut tracer) = QueryTracer::start(&QueryOptions {
        pids: args.pids.clone(),
    })
    .context("starting the query tracer")?;
    let mut collector = Collector::new(args.raw_queries);
    let ended = capture_loop::wait(args.duration, "queries", || {
        let _ = tracer.scan(&mut ebpf, false);
        tracer.poll(|ev| collector.on_event(ev));
        collector.executions
    })?;
    tracer.poll(|ev| collector.on_event(ev));
    let rows: Vec<Row> = collector
        .table
        .rows()
        .into_iter()
        .map(|row| {
            let id = crate::aggregate::fingerprint::parse_id_hex(&row.fingerprint_id).unwrap_or(0);
            Row {
                raw_example: collector.examples.get(&id).cloned(),
                row,
            }
        })
        .collect();
    match &args.json {
        Some(path) => report::write_json(path, &rows)?,
        None => print!("{}", render(&rows, args.top)),
    }
    summarize(
        &collector,
        &tracer,
        &crate::probes::drop_counters(&ebpf)?,
        ended.elapsed,
    );
    Ok(())
}

fn summarize(
    c: &Collector,
    tracer: &QueryTracer,
    drops: &[(&str, u64)],
    elapsed: std::time::Duration,
) {
    let files: Vec<String> = tracer
        .pg
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let sqlite = tracer.sqlite.files().len();
    eprintln!(
        "qprof: {} executions of {} statements in {:.1}s; libpq: {}; SQLite: {sqlite} file(s)",
        c.executions,
        c.table.len(),
        elapsed.as_secs_f64(),
        if files.is_empty() {
            "not found in any process".to_owned()
        } else {
            files.join(", ")
        }
    );
    if c.table.evicted() > 0 {
        eprintln!(
            "qprof: {} least-used statements were evicted ({} calls)",
            c.table.evicted(),
            c.table.evicted_calls()
        );
    }
    if c.unknown_text > 0 {
        eprintln!("qprof: {} executions had no known text", c.unknown_text);
    }
    if !drops.is_empty() || tracer.malformed > 0 {
        let mut lost: Vec<String> = drops.iter().map(|(n, v)| format!("{n}={v}")).collect();
        if tracer.malformed > 0 {
            lost.push(format!("malformed_events={}", tracer.malformed));
        }
        eprintln!("qprof: some data was degraded or lost: {}", lost.join(", "));
    }
}

fn render(rows: &[Row], top: usize) -> String {
    let us = |v: f64| report::human_ns((v * 1000.0) as u64);
    let body: Vec<Vec<String>> = rows
        .iter()
        .take(top)
        .map(|Row { row: r, .. }| {
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
