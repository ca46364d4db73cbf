//! The scrape: every family encoded from the state under one lock, through
//! `prometheus_client`'s encoders (`OpenMetrics` text, or Prometheus text
//! 0.0.4, which the same collector feeds).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::State;
use super::health::self_usage;
use super::hist::{HistValue, QUERY_BOUNDS, SYSCALL_BOUNDS, TCP_CONNECT_BOUNDS, TCP_RTT_BOUNDS};
use super::series::OTHER;
use crate::aggregate::fingerprint::id_hex;

/// Encodes the shared state at each scrape.
#[derive(Debug)]
pub struct StateCollector(pub Arc<Mutex<State>>);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// The label set of a family without labels.
const NO_LABELS: [(&str, &str); 0] = [];

fn query_labels<'a>(db: &'a str, id: &'a str) -> Labels<'a> {
    vec![("db", db), ("fingerprint_id", id)]
}

fn syscall_labels((comm, sys): &(String, String)) -> Labels<'_> {
    vec![("comm", comm.as_str()), ("syscall", sys.as_str())]
}

fn tcp_labels((remote, comm): &(String, String)) -> Labels<'_> {
    vec![("remote", remote.as_str()), ("comm", comm.as_str())]
}

/// One family: name (without unit and `_total`), help, unit, type.
struct Desc(&'static str, &'static str, Option<Unit>, MetricType);

fn family<T>(
    enc: &mut DescriptorEncoder,
    d: &Desc,
    rows: impl IntoIterator<Item = T>,
    mut put: impl FnMut(&mut MetricEncoder, T) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(d.0, d.1, d.2.as_ref(), d.3)?;
    for row in rows {
        put(&mut m, row)?;
    }
    Ok(())
}

fn counter(
    m: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    v: impl CounterValue,
) -> fmt::Result {
    v.put(&mut m.encode_family(labels)?)
}

fn gauge(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: f64) -> fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

fn histogram(
    m: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    h: &HistValue,
    bounds: &[f64],
) -> fmt::Result {
    m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
        h.sum(),
        h.count(),
        &h.buckets(bounds),
        None,
    )
}

/// u64 counts and f64 seconds both encode as counters.
trait CounterValue {
    fn put(self, m: &mut MetricEncoder) -> fmt::Result;
}
impl CounterValue for u64 {
    fn put(self, m: &mut MetricEncoder) -> fmt::Result {
        m.encode_counter::<NoLabelSet, _, u64>(&self, None)
    }
}
impl CounterValue for f64 {
    fn put(self, m: &mut MetricEncoder) -> fmt::Result {
        m.encode_counter::<NoLabelSet, _, f64>(&self, None)
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        encode_queries(&mut enc, &state)?;
        encode_syscalls(&mut enc, &state)?;
        encode_tcp(&mut enc, &state)?;
        encode_cardinality(&mut enc, &state)?;
        encode_host(&mut enc, &state)?;
        encode_traced(&mut enc, &state)?;
        encode_health(&mut enc, &state)?;
        encode_agent(&mut enc, &state)
    }
}

fn encode_queries(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let q = &state.families.queries;
    let rows: Vec<_> = q
        .tracked()
        .into_iter()
        .map(|(&(db, id), s)| (db.as_str(), id.map_or_else(|| OTHER.to_owned(), id_hex), s))
        .chain(
            q.others()
                .map(|(&(db, _), s)| (db.as_str(), OTHER.to_owned(), s)),
        )
        .collect();
    let labels = query_labels;
    let desc = Desc(
        "qprof_query_duration",
        "Latency of database statements by fingerprint, as the client library saw it.",
        Some(Unit::Seconds),
        MetricType::Histogram,
    );
    family(enc, &desc, &rows, |m, (db, id, s)| {
        histogram(m, &labels(db, id), &s.latency, QUERY_BOUNDS)
    })?;
    let desc = Desc(
        "qprof_query_errors",
        "Statements that returned an error.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (db, id, s)| {
        counter(m, &labels(db, id), s.errors)
    })?;
    let desc = Desc(
        "qprof_query_rows",
        "Rows returned or changed, where the client library reports them.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (db, id, s)| {
        counter(m, &labels(db, id), s.rows)
    })?;
    let desc = Desc(
        "qprof_query",
        "Normalized text of a fingerprint (literals removed, length-capped).",
        None,
        MetricType::Info,
    );
    let named = rows.iter().filter(|r| r.1 != OTHER);
    family(enc, &desc, named, |m, (db, id, s)| {
        let mut l = labels(db, id);
        l.push(("fingerprint", s.text.as_str()));
        m.encode_info(&l)
    })
}

fn encode_syscalls(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let f = &state.families.syscalls;
    let rows: Vec<_> = f.tracked().into_iter().chain(f.others()).collect();
    let labels = syscall_labels;
    let desc = Desc(
        "qprof_syscall_calls",
        "System calls made, every call counted.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        counter(m, &labels(k), s.calls)
    })?;
    let desc = Desc(
        "qprof_syscall_duration",
        "System call latency of the calls that were timed (a sample of them by default; _count is the timed calls).",
        Some(Unit::Seconds),
        MetricType::Histogram,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        histogram(m, &labels(k), &s.latency, SYSCALL_BOUNDS)
    })?;
    let desc = Desc(
        "qprof_syscall_errors",
        "System calls that failed, by errno.",
        None,
        MetricType::Counter,
    );
    let errors = rows
        .iter()
        .flat_map(|(k, s)| s.errors.iter().map(move |(e, n)| (*k, e.as_str(), *n)));
    family(enc, &desc, errors, |m, (k, errno, n)| {
        let mut l = labels(k);
        l.push(("errno", errno));
        counter(m, &l, n)
    })
}

fn encode_tcp(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let f = &state.families.tcp;
    let rows: Vec<_> = f.tracked().into_iter().chain(f.others()).collect();
    let labels = tcp_labels;
    let desc = Desc(
        "qprof_tcp_rtt",
        "Smoothed TCP round-trip time at each segment received.",
        Some(Unit::Seconds),
        MetricType::Histogram,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        histogram(m, &labels(k), &s.rtt, TCP_RTT_BOUNDS)
    })?;
    let desc = Desc(
        "qprof_tcp_connect_duration",
        "TCP connect latency, SYN sent to established.",
        Some(Unit::Seconds),
        MetricType::Histogram,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        histogram(m, &labels(k), &s.connect, TCP_CONNECT_BOUNDS)
    })?;
    let desc = Desc(
        "qprof_tcp_retransmits",
        "TCP segments retransmitted.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        counter(m, &labels(k), s.retransmits)
    })?;
    let desc = Desc(
        "qprof_tcp_resets",
        "TCP resets sent and received.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (k, s)| {
        counter(m, &labels(k), s.resets)
    })
}

fn encode_cardinality(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let f = &state.families;
    let rows = [
        ("queries", f.queries.len(), f.queries.evicted()),
        ("syscalls", f.syscalls.len(), f.syscalls.evicted()),
        ("tcp", f.tcp.len(), f.tcp.evicted()),
    ];
    let desc = Desc(
        "qprof_metrics_series",
        "Label sets held per capped family, the other series included.",
        None,
        MetricType::Gauge,
    );
    family(enc, &desc, rows, |m, (name, n, _)| {
        gauge(m, &[("family", name)], n as f64)
    })?;
    let desc = Desc(
        "qprof_metrics_series_evicted",
        "Series dropped from a capped family to make room for a heavier key.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, rows, |m, (name, _, e)| {
        counter(m, &[("family", name)], e)
    })
}

fn encode_host(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let Some(h) = &state.host else {
        return Ok(());
    };
    let gauges = [
        (
            "qprof_host_cpu_usage_ratio",
            "Busy fraction of all CPUs over the last sample interval.",
            None,
            h.cpu_usage_ratio,
        ),
        ("qprof_host_cpus", "CPUs of the host.", None, h.cpus as f64),
        (
            "qprof_host_memory_total",
            "Physical memory.",
            Some(Unit::Bytes),
            h.memory_total_bytes as f64,
        ),
        (
            "qprof_host_memory_available",
            "Memory available for new work without swapping.",
            Some(Unit::Bytes),
            h.memory_available_bytes as f64,
        ),
        (
            "qprof_host_swap_total",
            "Swap space.",
            Some(Unit::Bytes),
            h.swap_total_bytes as f64,
        ),
        (
            "qprof_host_swap_used",
            "Swap space in use.",
            Some(Unit::Bytes),
            h.swap_used_bytes as f64,
        ),
    ];
    for (name, help, unit, v) in gauges {
        let desc = Desc(name, help, unit, MetricType::Gauge);
        family(enc, &desc, [v], |m, v| gauge(m, &NO_LABELS, v))?;
    }
    let procs: Vec<_> = h.processes.iter().map(|p| (p.pid.to_string(), p)).collect();
    let labels = |pid: &str, comm: &str| [("pid", pid.to_owned()), ("comm", comm.to_owned())];
    let desc = Desc(
        "qprof_process_cpu",
        "CPU time of the heaviest processes (top by CPU, then by RSS).",
        Some(Unit::Seconds),
        MetricType::Counter,
    );
    family(enc, &desc, &procs, |m, (pid, p)| {
        counter(m, &labels(pid, &p.comm), p.cpu_seconds)
    })?;
    let desc = Desc(
        "qprof_process_resident_memory",
        "Resident memory of the heaviest processes.",
        Some(Unit::Bytes),
        MetricType::Gauge,
    );
    family(enc, &desc, &procs, |m, (pid, p)| {
        gauge(m, &labels(pid, &p.comm), p.rss_bytes as f64)
    })
}

fn encode_traced(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let rows: Vec<_> = state
        .counters
        .iter()
        .map(|c| (c.pid.to_string(), c))
        .collect();
    let labels = |pid: &str, comm: &str| [("pid", pid.to_owned()), ("comm", comm.to_owned())];
    let desc = Desc(
        "qprof_traced_process_task_clock",
        "Task clock (CPU time) of the traced processes, from perf counters.",
        Some(Unit::Seconds),
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (pid, c)| {
        counter(m, &labels(pid, &c.comm), c.task_clock_ns as f64 / 1e9)
    })?;
    let desc = Desc(
        "qprof_traced_process_context_switches",
        "Context switches of the traced processes, from perf counters.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (pid, c)| {
        counter(m, &labels(pid, &c.comm), c.context_switches)
    })?;
    let desc = Desc(
        "qprof_traced_process_page_faults",
        "Page faults of the traced processes, from perf counters.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &rows, |m, (pid, c)| {
        counter(m, &labels(pid, &c.comm), c.page_faults)
    })?;
    let l = &state.counter_losses;
    let desc = Desc(
        "qprof_traced_process_skipped",
        "Threads or processes the perf counters do not cover, by reason.",
        None,
        MetricType::Counter,
    );
    let rows = [
        ("threads_skipped", l.threads_skipped),
        ("pids_skipped", l.pids_skipped),
        ("open_error", l.open_errors),
        ("read_error", l.read_errors),
    ];
    family(enc, &desc, rows, |m, (reason, n)| {
        counter(m, &[("reason", reason)], n)
    })
}

fn encode_health(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let h = &state.health;
    let desc = Desc(
        "qprof_lost_events",
        "Events or samples lost, by cause (kernel counter ids and agent-side causes).",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &h.lost, |m, (cause, n)| {
        counter(m, &[("cause", cause.as_str())], *n)
    })?;
    let desc = Desc(
        "qprof_bpf_map_entries",
        "Entries in a BPF map at the last window.",
        None,
        MetricType::Gauge,
    );
    family(enc, &desc, &h.maps, |m, (map, (e, _))| {
        gauge(m, &[("map", map.as_str())], *e as f64)
    })?;
    let desc = Desc(
        "qprof_bpf_map_capacity",
        "Capacity (max_entries) of a BPF map.",
        None,
        MetricType::Gauge,
    );
    family(enc, &desc, &h.maps, |m, (map, (_, c))| {
        gauge(m, &[("map", map.as_str())], *c as f64)
    })?;
    let desc = Desc(
        "qprof_bpf_map_fill_ratio",
        "Entries over capacity of a BPF map.",
        None,
        MetricType::Gauge,
    );
    family(enc, &desc, &h.maps, |m, (map, (e, c))| {
        gauge(
            m,
            &[("map", map.as_str())],
            if *c == 0 { 0.0 } else { *e as f64 / *c as f64 },
        )
    })?;
    let desc = Desc(
        "qprof_bpf_stats_enabled",
        "Whether kernel.bpf_stats_enabled is on (program run time is measured only then; qprof never turns it on).",
        None,
        MetricType::Gauge,
    );
    family(enc, &desc, h.bpf.enabled, |m, on| {
        gauge(m, &NO_LABELS, f64::from(u8::from(on)))
    })?;
    let desc = Desc(
        "qprof_bpf_program_run_time",
        "Kernel time spent in each of the agent's BPF programs (when BPF stats are enabled).",
        Some(Unit::Seconds),
        MetricType::Counter,
    );
    let progs = &h.bpf.programs;
    family(enc, &desc, progs, |m, p| {
        counter(m, &[("program", p.name.as_str())], p.run_time.as_secs_f64())
    })?;
    let desc = Desc(
        "qprof_bpf_program_runs",
        "Runs of each of the agent's BPF programs (when BPF stats are enabled).",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, progs, |m, p| {
        counter(m, &[("program", p.name.as_str())], p.run_count)
    })
}

fn encode_agent(enc: &mut DescriptorEncoder, state: &State) -> fmt::Result {
    let h = &state.health;
    let (cpu, rss) = self_usage();
    let desc = Desc(
        "qprof_agent_cpu",
        "CPU time of the agent (user and system).",
        Some(Unit::Seconds),
        MetricType::Counter,
    );
    family(enc, &desc, cpu, |m, v| counter(m, &NO_LABELS, v))?;
    let desc = Desc(
        "qprof_agent_resident_memory",
        "Resident memory of the agent.",
        Some(Unit::Bytes),
        MetricType::Gauge,
    );
    family(enc, &desc, rss, |m, v| gauge(m, &NO_LABELS, v as f64))?;
    let desc = Desc(
        "qprof_agent_windows_written",
        "Continuous-profile windows written to the store.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, [h.windows_written], |m, v| {
        counter(m, &NO_LABELS, v)
    })?;
    let desc = Desc(
        "qprof_agent_captures",
        "Captures taken, by kind.",
        None,
        MetricType::Counter,
    );
    family(enc, &desc, &h.captures, |m, (k, n)| {
        counter(m, &[("kind", k.as_str())], *n)
    })?;
    let desc = Desc(
        "qprof_agent_store_size",
        "Bytes on disk, by store.",
        Some(Unit::Bytes),
        MetricType::Gauge,
    );
    family(enc, &desc, &h.stores, |m, (s, n)| {
        gauge(m, &[("store", s.as_str())], *n as f64)
    })
}
