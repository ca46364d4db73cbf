//! The agent's own health: what it lost and why, how full its BPF maps
//! are, what its programs cost the kernel, and what the agent itself costs.

use std::collections::BTreeMap;
use std::time::Duration;

use qprof_common::counters::Counter;

use super::labels::label_value;

/// Distinct loss causes kept: the kernel's counter ids (30 today, at most
/// `COUNTER_SLOTS` = 32) plus the agent's own (table evictions, unreadable
/// records…), with room to grow. A cause past the cap is counted under
/// "other", never dropped.
pub const MAX_CAUSES: usize = 128;

/// BPF maps whose fill is reported: the object has ~40; 64 leaves room.
pub const MAX_MAPS: usize = 64;

/// BPF programs whose run time is reported: the object has ~35.
pub const MAX_PROGRAMS: usize = 64;

/// Capture kinds and stores named by the agent (six kinds, two stores).
pub const MAX_KINDS: usize = 16;

/// Sources of cumulative loss totals (one per loaded BPF object): each
/// capability loads at most one, 16 leaves room.
pub const MAX_SOURCES: usize = 16;

/// Label bytes of a cause, map, program, kind or store name.
const NAME_BYTES: usize = 64;

/// Where `kernel.bpf_stats_enabled` is read. The agent never turns it on
/// by itself: the statistics cost every BPF program two clock reads per
/// run, a choice for the host's owner (`sysctl kernel.bpf_stats_enabled=1`).
pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Kernel run statistics of one of the agent's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_time: Duration,
    pub run_count: u64,
}

/// What the kernel says about the agent's programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfStats {
    /// `kernel.bpf_stats_enabled`; `None` when unreadable. The sysctl shows
    /// only its own setting: statistics turned on by another tool holding a
    /// `BPF_ENABLE_STATS` fd (bpftop does) count while this reads false.
    pub enabled: Option<bool>,
    /// Per program, when statistics are or were on (any run counted):
    /// zeros would read as "free", so they are left out.
    pub programs: Vec<ProgramStats>,
    /// Programs the agent named that the kernel no longer lists, or whose
    /// info could not be read.
    pub unreadable: u64,
}

/// Reads `kernel.bpf_stats_enabled`.
#[must_use]
pub fn bpf_stats_enabled() -> Option<bool> {
    let text = std::fs::read_to_string(BPF_STATS_SYSCTL).ok()?;
    Some(text.trim() != "0")
}

/// Run time and count of the programs `ours` names (kernel id, name as
/// the agent knows it: the kernel keeps only 15 bytes of a name, and
/// `pq_send_query_params`/`pq_send_query_prepared` would collide).
/// Walks the kernel's program list once (three syscalls per program), so
/// the agent calls it on its sampling timer, not per scrape.
#[must_use]
pub fn bpf_program_stats(ours: &[(u32, String)]) -> BpfStats {
    let wanted: BTreeMap<u32, &str> = ours
        .iter()
        .take(MAX_PROGRAMS)
        .map(|(id, name)| (*id, name.as_str()))
        .collect();
    let mut programs = Vec::new();
    if !wanted.is_empty() {
        for info in aya::programs::loaded_programs().flatten() {
            if let Some(name) = wanted.get(&info.id()) {
                programs.push(ProgramStats {
                    name: (*name).to_owned(),
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                });
            }
        }
    }
    let unreadable = (wanted.len() - programs.len()) as u64;
    let enabled = bpf_stats_enabled();
    if enabled != Some(true) && programs.iter().all(|p| p.run_count == 0) {
        programs.clear();
    }
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    BpfStats {
        enabled,
        programs,
        unreadable,
    }
}

/// (kernel id, name) of every loaded program of `ebpf`, as
/// [`bpf_program_stats`] takes them; programs not loaded (a capability
/// that is off) have no id and are left out.
#[must_use]
pub fn program_ids(ebpf: &aya::Ebpf) -> Vec<(u32, String)> {
    ebpf.programs()
        .filter_map(|(name, p)| Some((p.info().ok()?.id(), name.to_owned())))
        .collect()
}

/// The agent's CPU time (user + system) and resident set, read at scrape
/// time: one `getrusage` and one small procfs read.
#[must_use]
pub fn self_usage() -> (Option<f64>, Option<u64>) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; getrusage only writes it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    let cpu = (rc == 0).then(|| {
        // SAFETY: getrusage returned 0, so it filled the struct (and it
        // was zeroed before, so every field is initialized either way).
        let ru = unsafe { ru.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    });
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_bytes(&s));
    (cpu, rss)
}

/// `VmRSS:` of a `/proc/<pid>/status` text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Cumulative health values the agent sets.
#[derive(Debug)]
pub struct Health {
    /// cause -> events or samples lost.
    pub lost: BTreeMap<String, u64>,
    /// map -> (entries, capacity) at the last window.
    pub maps: BTreeMap<String, (u64, u64)>,
    pub bpf: BpfStats,
    pub windows_written: u64,
    /// capture kind -> captures taken.
    pub captures: BTreeMap<String, u64>,
    /// store -> bytes on disk.
    pub stores: BTreeMap<String, u64>,
    /// source -> cause -> the last cumulative total seen, to add only
    /// what grew since ([`Health::add_lost_totals`]).
    last_totals: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Default for Health {
    /// Every kernel counter id exists from the start, at zero: an alert on
    /// `increase(qprof_lost_events_total[5m]) > 0` needs the series before
    /// the first loss.
    fn default() -> Self {
        Self {
            lost: Counter::ALL
                .iter()
                .map(|c| (c.name().to_owned(), 0))
                .collect(),
            maps: BTreeMap::new(),
            bpf: BpfStats::default(),
            windows_written: 0,
            captures: BTreeMap::new(),
            stores: BTreeMap::new(),
            last_totals: BTreeMap::new(),
        }
    }
}

/// The slot of `name` in a capped map: itself if present or if there is
/// room, else "other".
fn slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, name: &str, cap: usize) -> &'m mut V {
    let name = label_value(name, NAME_BYTES);
    let key = if map.contains_key(&name) || map.len() < cap {
        name
    } else {
        "other".to_owned()
    };
    map.entry(key).or_default()
}

impl Health {
    pub fn add_lost(&mut self, cause: &str, n: u64) {
        *slot(&mut self.lost, cause, MAX_CAUSES) += n;
    }

    /// Adds what grew since the last call for `source` (e.g. one BPF
    /// object's `DROP_COUNTERS`, which are cumulative and never reset). A
    /// total below the last one means the source was reloaded: all of it
    /// is new.
    pub fn add_lost_totals(&mut self, source: &str, totals: &[(&str, u64)]) {
        let last = slot(&mut self.last_totals, source, MAX_SOURCES);
        let mut deltas = Vec::with_capacity(totals.len());
        for &(cause, total) in totals {
            let seen = last.entry(label_value(cause, NAME_BYTES)).or_default();
            deltas.push((cause, total.checked_sub(*seen).unwrap_or(total)));
            *seen = total;
        }
        // Bound the per-source map like the causes themselves.
        while last.len() > MAX_CAUSES {
            last.pop_last();
        }
        for (cause, n) in deltas {
            self.add_lost(cause, n);
        }
    }

    pub fn set_map(&mut self, map: &str, entries: u64, capacity: u64) {
        *slot(&mut self.maps, map, MAX_MAPS) = (entries, capacity);
    }

    pub fn capture_taken(&mut self, kind: &str) {
        *slot(&mut self.captures, kind, MAX_KINDS) += 1;
    }

    pub fn set_store_bytes(&mut self, store: &str, bytes: u64) {
        *slot(&mut self.stores, store, MAX_KINDS) = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VmRSS` parses from a real status text; our own is non-zero.
    #[test]
    fn rss_and_cpu_of_self() {
        assert_eq!(
            vm_rss_bytes("Name:\tx\nVmRSS:\t  1234 kB\nVmSwap: 0 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(vm_rss_bytes("Name: x\n"), None);
        let (cpu, rss) = self_usage();
        assert!(rss.is_some_and(|r| r > 1 << 20), "{rss:?}");
        assert!(cpu.is_some_and(|c| c >= 0.0), "{cpu:?}");
    }

    /// With kernel BPF stats on (through `BPF_ENABLE_STATS`, only while
    /// the test holds its fd: dropping it, even in a panic, turns them off
    /// again, so the host's setting is untouched), the agent's `sys_enter`
    /// program attached and some syscalls made, the stats find it by id
    /// with runs and run time. Needs root.
    #[test]
    fn bpf_program_stats_of_a_live_program() {
        use aya::programs::RawTracePoint;
        let mut ebpf = crate::probes::load_object().expect("load the BPF object (root?)");
        let prog: &mut RawTracePoint = ebpf
            .program_mut("sys_enter")
            .expect("sys_enter")
            .try_into()
            .expect("raw tracepoint");
        prog.load().expect("load");
        let _link = prog.attach("sys_enter").expect("attach");
        let ids = program_ids(&ebpf);
        assert_eq!(ids.len(), 1, "only the loaded program has an id: {ids:?}");
        let id = ids[0].0;
        let before = bpf_program_stats(&[(id, "sys_enter".into())]);
        let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable stats");
        for _ in 0..1_000 {
            let _ = std::fs::metadata("/");
        }
        let on = bpf_program_stats(&[(id, "sys_enter".into()), (u32::MAX, "gone".into())]);
        drop(stats_fd);
        if before.enabled == Some(false) {
            assert!(before.programs.is_empty(), "no zeros while stats are off");
        }
        assert_eq!(on.enabled, bpf_stats_enabled(), "the sysctl as it is");
        assert_eq!(on.unreadable, 1, "the unknown id is counted");
        let p = on.programs.first().expect("our program");
        assert_eq!(p.name, "sys_enter");
        assert!(p.run_count >= 1_000, "{p:?}");
        assert!(p.run_time > Duration::ZERO, "{p:?}");
    }

    /// Cumulative totals become deltas per source; a smaller total (a
    /// reloaded object) counts whole; sources do not mix.
    #[test]
    fn totals_become_deltas() {
        let mut h = Health::default();
        for total in [5, 8, 8, 3] {
            h.add_lost_totals("queries", &[("query_map_full", total)]);
        }
        h.add_lost_totals("cpu", &[("query_map_full", 4)]);
        assert_eq!(h.lost.get("query_map_full"), Some(&(5 + 3 + 3 + 4)));
    }

    /// Named causes beyond the cap fold into "other"; every kernel counter
    /// id is present from the start.
    #[test]
    fn causes_capped() {
        let mut h = Health::default();
        assert_eq!(h.lost.len(), Counter::ALL.len());
        assert_eq!(h.lost.get("stack_collision"), Some(&0));
        for i in 0..200 {
            h.add_lost(&format!("cause{i}"), 1);
        }
        assert_eq!(h.lost.len(), MAX_CAUSES + 1);
        let other = h.lost.get("other").copied().unwrap_or(0);
        assert_eq!(other, 200 - (MAX_CAUSES - Counter::ALL.len()) as u64);
        h.add_lost("stack_collision", 3);
        assert_eq!(h.lost.get("stack_collision"), Some(&3));
    }
}
