//! Feeding the agent's Prometheus metrics (`export::metrics`) with what
//! only the daemon knows: host and store readings on a timer, and the
//! encoding of a scrape.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Shared, log};
use crate::{
    export::metrics::{health::bpf_program_stats, host::HostSampler},
    probes::counters::ProcessCounters,
};

/// How often host, process and store readings are refreshed: scrapes
/// come every 15-60 s; reading every process's stats more often than
/// that would only cost CPU.
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Processes reported by CPU and by RSS: the heaviest few of a host are
/// what an operator looks for; more would only add series.
const TOP_PROCESSES: usize = 20;

/// Content type and body of a scrape.
pub fn encode(shared: &Shared, accept: Option<&str>) -> (&'static str, String) {
    match shared.metrics.encode(accept) {
        Ok(pair) => pair,
        Err(e) => (
            "text/plain; charset=utf-8",
            format!("# encoding failed: {e}\n"),
        ),
    }
}

/// Refreshes host, process, traced-process counter, BPF program and store
/// readings every [`SAMPLE_EVERY`], on a blocking thread of its own
/// (sysinfo and perf reads are synchronous).
pub fn spawn_sampler(shared: &Arc<Shared>) {
    let s = shared.clone();
    shared.tracker.spawn_blocking(move || {
        let mut host = match HostSampler::new(TOP_PROCESSES) {
            Ok(h) => Some(h),
            Err(e) => {
                log(&format!("host metrics unavailable: {e}"));
                None
            }
        };
        let mut counters = ProcessCounters::new();
        let mut next = Instant::now();
        while !s.cancel.is_cancelled() {
            if Instant::now() >= next {
                next = Instant::now() + SAMPLE_EVERY;
                if let Some(h) = host.as_mut() {
                    s.metrics.set_host(h.sample());
                }
                counters.set_pids(&traced_pids(&s));
                let counts = counters.read();
                s.metrics.set_process_counters(counts, counters.losses());
                s.metrics.set_bpf_stats(bpf_program_stats(&own_programs()));
                s.metrics.set_store_bytes("data", s.store.size());
                if let Ok(q) = s.queries.lock() {
                    s.metrics.set_map_fill(
                        "agent_query_table",
                        q.len() as u64,
                        q.capacity() as u64,
                    );
                }
                if let Some(p) = &s.pyroscope {
                    let st = p.stats();
                    let load = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    s.metrics.add_lost_totals(
                        "pyroscope",
                        &[
                            ("pyroscope_push_failed", load(&st.failed)),
                            ("pyroscope_push_rejected", load(&st.rejected)),
                            ("pyroscope_queue_full", load(&st.dropped_queue_full)),
                            ("pyroscope_processes_left_out", load(&st.dropped_processes)),
                        ],
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// The processes qprof is tracing that matter most: those that ran the
/// statements with the most total time (a client's pid; at most
/// [`TRACED_PIDS`]).
fn traced_pids(shared: &Shared) -> Vec<u32> {
    let Ok(queries) = shared.queries.lock() else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for row in queries.rows() {
        for pid in row.pids {
            if pids.len() >= TRACED_PIDS {
                return pids;
            }
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Processes whose software counters are read: the counters cost three
/// file descriptors per thread, so a few busy clients, not the host.
const TRACED_PIDS: usize = 16;

/// (id, name) of every BPF program this process holds, from the
/// `prog_id:` lines of its own fdinfo and the kernel's program list: the
/// components each own their object on their own thread, so the agent
/// finds its programs the way an outside observer would.
fn own_programs() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    let ids: std::collections::BTreeSet<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("prog_id:")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect()
}
