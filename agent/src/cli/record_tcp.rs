//! `qprof record tcp`: per remote endpoint and owning process, connects,
//! failed connects, connect latency, smoothed RTT, retransmits, resets and
//! bytes.

use std::path::Path;

use anyhow::{Context as _, bail};

use super::{RecordTcpArgs, capture_loop, report};
use crate::{
    aggregate::tcp::{Direction, TcpRow},
    probes::{
        component::Component as _,
        preflight,
        tcp::{TcpOptions, TcpTracer},
    },
};

pub fn run(args: &RecordTcpArgs) -> anyhow::Result<()> {
    let options = validate(args)?;
    let tracer = TcpTracer::start(&options).context("starting the TCP tracer")?;
    let (table, ended) = capture_loop::record(tracer, args.duration, "connections tracked")?;
    let rows = table.rows();
    match &args.json {
        Some(path) => report::write_json(path, &rows)?,
        None => print!("{}", render(&rows)),
    }
    eprintln!(
        "qprof: {} connects ({} failed), {} retransmits, {} resets in {} endpoint rows over {:.1}s",
        rows.iter().map(|r| r.connects).sum::<u64>(),
        rows.iter().map(|r| r.failed_connects).sum::<u64>(),
        rows.iter().map(|r| r.retransmits).sum::<u64>(),
        rows.iter().map(|r| r.resets).sum::<u64>(),
        rows.len(),
        ended.elapsed.as_secs_f64()
    );
    if !table.drops.is_empty() {
        let lost: Vec<String> = table
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!("qprof: some data could not be kept: {}", lost.join(", "));
    }
    Ok(())
}

/// Every check that can fail before tracing starts, so that a bad value
/// costs nothing.
fn validate(args: &RecordTcpArgs) -> anyhow::Result<TcpOptions> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
    }
    if let Some(path) = &args.json {
        report::check_json_target(path)?;
    }
    preflight::check_capabilities()?;
    preflight::check_btf()?;
    if preflight::ensure_tracefs()? {
        eprintln!("qprof: mounted tracefs at {}", preflight::TRACEFS);
    }
    Ok(TcpOptions {
        pids: args.pids.clone(),
    })
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(b) if b < 10 * 1024 => format!("{b}B"),
        Some(b) if b < 10 * 1024 * 1024 => format!("{}KiB", b / 1024),
        Some(b) => format!("{}MiB", b / (1024 * 1024)),
    }
}

fn latency_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |us| report::human_ns((us * 1e3) as u64))
}

/// The `record tcp` table: one line per (process, direction, local,
/// remote). `qprof top` prints the agent's rows with it.
pub(crate) fn render(rows: &[TcpRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.pid == 0 {
                    "-".to_owned()
                } else {
                    r.pid.to_string()
                },
                if r.comm.is_empty() {
                    "-".to_owned()
                } else {
                    r.comm.clone()
                },
                match r.direction {
                    Direction::Outbound => "out",
                    Direction::Inbound => "in",
                    Direction::Unknown => "?",
                }
                .to_owned(),
                r.local.clone(),
                r.remote.clone(),
                r.connects.to_string(),
                r.failed_connects.to_string(),
                latency_us(r.connect_p50_us),
                latency_us(r.connect_p99_us),
                r.rtt_p50_us
                    .map_or_else(|| "-".to_owned(), |us| report::human_ns(us * 1_000)),
                r.rtt_p99_us
                    .map_or_else(|| "-".to_owned(), |us| report::human_ns(us * 1_000)),
                r.retransmits.to_string(),
                r.resets.to_string(),
                bytes(r.bytes_sent),
                bytes(r.bytes_received),
                r.open.to_string(),
            ]
        })
        .collect();
    report::table(
        &[
            "PID", "COMM", "DIR", "LOCAL", "REMOTE", "CONN", "FAIL", "CONN_P50", "CONN_P99",
            "RTT_P50", "RTT_P99", "RETRANS", "RESETS", "SENT", "RECV", "OPEN",
        ],
        &body,
    )
}
