//! The signals rules watch, sampled every tick (1 s): query latency
//! quantiles per fingerprint over the last few one-second query slices, and
//! each process's CPU and RSS growth from `/proc`.

use std::collections::{HashMap, VecDeque};

use crate::aggregate::{
    fine_histogram::FineHistogram,
    fingerprint::id_hex,
    queries::{Db, QueryTable},
};

use super::eval::Observation;

/// Seconds of query slices a quantile is computed over: one second holds
/// too few calls of a slow statement (3 of a 300 ms one) for a p99 to mean
/// anything, and a longer span makes the breach show later.
pub const QUERY_SPAN: usize = 5;

/// The last [`QUERY_SPAN`] one-second query slices. Each is bounded by the
/// query table's capacity, so this is at most 5x that.
#[derive(Default)]
pub struct QuerySlices {
    slices: VecDeque<QueryTable>,
}

impl QuerySlices {
    pub fn push(&mut self, slice: QueryTable) {
        while self.slices.len() >= QUERY_SPAN {
            self.slices.pop_front();
        }
        self.slices.push_back(slice);
    }

    /// Quantile `q` (in ms) of every fingerprint seen in the span.
    #[must_use]
    pub fn quantiles(&self, q: f64) -> Vec<Observation> {
        struct Acc {
            hist: FineHistogram,
            pids: Vec<u32>,
            text: String,
        }
        let mut all: HashMap<(Db, u64), Acc> = HashMap::new();
        for slice in &self.slices {
            for (db, id, stats) in slice.iter() {
                let acc = all.entry((db, id)).or_insert_with(|| Acc {
                    hist: FineHistogram::new(),
                    pids: Vec::new(),
                    text: stats.text.clone(),
                });
                acc.hist.merge(&stats.latency);
                for &p in &stats.pids {
                    if !acc.pids.contains(&p) && acc.pids.len() < 64 {
                        acc.pids.push(p);
                    }
                }
            }
        }
        all.into_iter()
            .map(|((_, id), a)| Observation {
                subject: id_hex(id),
                value: a.hist.percentile(q) as f64 / 1e6,
                pids: a.pids,
                label: a.text,
            })
            .collect()
    }
}

/// Processes followed: a few hundred on a busy host; past 8,192 the rest
/// are not watched (counted by the caller as `trigger_processes_unwatched`).
pub const MAX_PROCESSES: usize = 8192;

/// RSS samples kept per process for the growth rate: one a second, the
/// rate is taken over the last 30 s (smooths allocator bursts, still
/// shows a steady leak within the rule's `for`).
const RSS_SPAN: usize = 31;

struct Proc {
    comm: String,
    /// utime + stime in clock ticks at the previous sample.
    ticks: u64,
    rss: VecDeque<(u64, u64)>,
    seen: u64,
}

/// Per-process CPU and RSS from `/proc`, sampled once a tick.
#[derive(Default)]
pub struct ProcSampler {
    procs: HashMap<u32, Proc>,
    last_ms: u64,
    tick: u64,
    pub unwatched: u64,
}

/// One process's reading.
pub struct ProcReading {
    pub cpu: Vec<Observation>,
    pub rss_growth: Vec<Observation>,
}

impl ProcSampler {
    /// Reads every process; returns CPU % (of one CPU) since the last call
    /// and the RSS growth in MB/min over the last 30 s.
    pub fn sample(&mut self, now_ms: u64, own_pid: u32) -> ProcReading {
        self.tick += 1;
        let dt_s = (now_ms.saturating_sub(self.last_ms)) as f64 / 1000.0;
        let first = self.last_ms == 0;
        self.last_ms = now_ms;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let mut out = ProcReading {
            cpu: Vec::new(),
            rss_growth: Vec::new(),
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own_pid {
                continue;
            }
            let Some((comm, ticks, rss_pages)) = read_stat(pid) else {
                continue;
            };
            if !self.procs.contains_key(&pid) && self.procs.len() >= MAX_PROCESSES {
                self.unwatched += 1;
                continue;
            }
            let p = self.procs.entry(pid).or_insert_with(|| Proc {
                comm: comm.clone(),
                ticks,
                rss: VecDeque::new(),
                seen: 0,
            });
            let new = p.seen == 0;
            p.seen = self.tick;
            let used = ticks.saturating_sub(p.ticks) as f64 / hz;
            p.ticks = ticks;
            p.comm = comm;
            if !new && !first && dt_s > 0.0 {
                out.cpu.push(obs(pid, &p.comm, used / dt_s * 100.0));
            }
            let rss = rss_pages * page;
            p.rss.push_back((now_ms, rss));
            while p.rss.len() > RSS_SPAN {
                p.rss.pop_front();
            }
            if let (Some(&(t0, r0)), true) = (p.rss.front(), p.rss.len() >= 3) {
                let minutes = (now_ms - t0) as f64 / 60_000.0;
                let mb = (rss as f64 - r0 as f64) / f64::from(1u32 << 20);
                if minutes > 0.0 {
                    out.rss_growth.push(obs(pid, &p.comm, mb / minutes));
                }
            }
        }
        let tick = self.tick;
        self.procs.retain(|_, p| p.seen == tick);
        out
    }
}

fn obs(pid: u32, comm: &str, value: f64) -> Observation {
    Observation {
        subject: pid.to_string(),
        value,
        pids: vec![pid],
        label: comm.to_owned(),
    }
}

/// comm, utime + stime, rss (pages) from `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(String, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The comm is in parentheses and may hold spaces and parentheses: the
/// fields after it start after the last `)`.
fn parse_stat(text: &str) -> Option<(String, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
    Some((comm, field(14)? + field(15)?, field(24)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A comm with spaces and parentheses does not shift the numeric fields.
    #[test]
    fn stat_with_odd_comm_parses() {
        let line = "42 (a (b) c) R 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 \
                    100 1000000 777 18446744073709551615";
        let (comm, ticks, rss) = parse_stat(line).unwrap();
        assert_eq!(comm, "a (b) c");
        assert_eq!(ticks, 300);
        assert_eq!(rss, 777);
    }

    /// This very process is read: its CPU shows up on the second sample.
    #[test]
    fn own_process_is_sampled() {
        let mut s = ProcSampler::default();
        s.sample(1_000, 0);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let r = s.sample(1_300, 0);
        let me = std::process::id().to_string();
        let cpu = r.cpu.iter().find(|o| o.subject == me).unwrap();
        assert!(cpu.value > 30.0, "{} {x}", cpu.value);
    }
}
