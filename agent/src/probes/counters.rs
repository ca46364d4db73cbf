//! Software perf counters (task-clock, context switches, page faults) of
//! the processes qprof traces, in counting mode: no samples, no ring
//! buffer, the kernel only adds to a 64-bit count that a `read` returns.
//!
//! A perf counter opened on a pid counts one thread. `inherit` would follow
//! threads created later, but an inherited child's counts reach the
//! parent's fd only when the child exits, so live threads would be missed.
//! Each thread therefore gets its own counters, opened when a scan finds
//! it; an exited thread's final counts are kept in the process's total, so
//! the totals only grow.

use std::collections::{BTreeMap, HashMap};
use std::io;

use perf_event::{Builder, Counter, events::Software};

/// Processes counted at once: the agent hands the pids it traces (database
/// clients and servers); 32 covers a pool of backends and their clients.
pub const MAX_PIDS: usize = 32;

/// Threads counted across all processes. Three fds each (one per event),
/// so 256 threads hold 768 fds: under the 1,024 soft `RLIMIT_NOFILE` the
/// agent may run with. Threads past the cap are counted as skipped.
pub const MAX_THREADS: usize = 256;

/// The events, in the order of [`ProcessCounts`]' fields.
const EVENTS: [Software; 3] = [
    Software::TASK_CLOCK,
    Software::CONTEXT_SWITCHES,
    Software::PAGE_FAULTS,
];

/// Counts of one process since qprof started counting it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    pub pid: u32,
    pub comm: String,
    /// CPU time on the task clock, nanoseconds.
    pub task_clock_ns: u64,
    pub context_switches: u64,
    pub page_faults: u64,
}

/// Why a thread is not counted, cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterLosses {
    /// Threads beyond [`MAX_THREADS`].
    pub threads_skipped: u64,
    /// Pids beyond [`MAX_PIDS`].
    pub pids_skipped: u64,
    /// `perf_event_open` or `read` failures (permission, fd limit, a
    /// thread that exited between the scan and the open).
    pub open_errors: u64,
    pub read_errors: u64,
}

#[derive(Debug, Default)]
struct Process {
    comm: String,
    threads: HashMap<u32, [Counter; 3]>,
    /// Final counts of threads that exited.
    retired: [u64; 3],
}

/// Per-thread counters of a bounded set of processes.
#[derive(Debug, Default)]
pub struct ProcessCounters {
    procs: BTreeMap<u32, Process>,
    losses: CounterLosses,
}

fn open_thread(tid: u32) -> io::Result<[Counter; 3]> {
    let open = |ev: Software| {
        Builder::new(ev)
            .observe_pid(tid as i32)
            .any_cpu()
            .include_kernel()
            .enabled(true)
            .build()
    };
    Ok([open(EVENTS[0])?, open(EVENTS[1])?, open(EVENTS[2])?])
}

fn read3(c: &mut [Counter; 3]) -> io::Result<[u64; 3]> {
    Ok([c[0].read()?, c[1].read()?, c[2].read()?])
}

fn thread_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

impl ProcessCounters {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts exactly these processes from now on (the first
    /// [`MAX_PIDS`]); processes no longer named are closed, new ones
    /// start at zero.
    pub fn set_pids(&mut self, pids: &[u32]) {
        let mut wanted: Vec<u32> = pids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.len() > MAX_PIDS {
            self.losses.pids_skipped += (wanted.len() - MAX_PIDS) as u64;
            wanted.truncate(MAX_PIDS);
        }
        self.procs
            .retain(|pid, _| wanted.binary_search(pid).is_ok());
        for pid in wanted {
            self.procs.entry(pid).or_insert_with(|| Process {
                comm: comm_of(pid),
                ..Process::default()
            });
        }
    }

    /// Opens counters on threads started since the last scan, folds those
    /// of exited threads into their process, and returns every process's
    /// totals. Processes that exited are reported one last time, then
    /// forgotten.
    pub fn read(&mut self) -> Vec<ProcessCounts> {
        let mut budget = MAX_THREADS.saturating_sub(self.threads());
        let mut out = Vec::with_capacity(self.procs.len());
        let mut gone = Vec::new();
        for (&pid, p) in &mut self.procs {
            let tids = thread_ids(pid);
            if tids.is_empty() {
                gone.push(pid);
            }
            // Exited threads: final read, then close.
            let exited: Vec<u32> = p
                .threads
                .keys()
                .copied()
                .filter(|t| tids.binary_search(t).is_err())
                .collect();
            for tid in exited {
                if let Some(mut c) = p.threads.remove(&tid) {
                    match read3(&mut c) {
                        Ok(v) => (0..3).for_each(|i| p.retired[i] += v[i]),
                        Err(_) => self.losses.read_errors += 1,
                    }
                }
            }
            let new: Vec<u32> = tids
                .into_iter()
                .filter(|t| !p.threads.contains_key(t))
                .collect();
            for tid in new {
                if budget == 0 {
                    self.losses.threads_skipped += 1;
                    continue;
                }
                match open_thread(tid) {
                    Ok(c) => {
                        p.threads.insert(tid, c);
                        budget -= 1;
                    }
                    Err(_) => self.losses.open_errors += 1,
                }
            }
            let mut totals = p.retired;
            for c in p.threads.values_mut() {
                match read3(c) {
                    Ok(v) => (0..3).for_each(|i| totals[i] += v[i]),
                    Err(_) => self.losses.read_errors += 1,
                }
            }
            out.push(ProcessCounts {
                pid,
                comm: p.comm.clone(),
                task_clock_ns: totals[0],
                context_switches: totals[1],
                page_faults: totals[2],
            });
        }
        for pid in gone {
            self.procs.remove(&pid);
        }
        out
    }

    fn threads(&self) -> usize {
        self.procs.values().map(|p| p.threads.len()).sum()
    }

    /// Cumulative losses, for the health metrics.
    #[must_use]
    pub fn losses(&self) -> &CounterLosses {
        &self.losses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time of the calling thread, from the kernel's thread clock.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec that clock_gettime fills.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
        assert_eq!(rc, 0);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// A thread of this test that spins and sleeps is counted: the task
    /// clock grows by at least the thread's CPU time (the kernel's thread
    /// clock is the reference) and the context switches by at least its
    /// sleeps; its counts survive its exit.
    #[test]
    fn counts_a_busy_thread() {
        let mut pc = ProcessCounters::new();
        pc.set_pids(&[std::process::id()]);
        let before = pc.read();
        assert_eq!(before.len(), 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _ = rx.recv(); // wait until counted
            let start = thread_cpu_ns();
            let mut x = 0u64;
            while thread_cpu_ns() - start < 100_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            for _ in 0..20 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            thread_cpu_ns() - start
        });
        let _ = pc.read(); // opens the worker's counters
        let _ = tx.send(());
        let cpu = worker.join().unwrap_or(0);
        let after = pc.read();
        // Other tests' threads may exit between the scan and the open
        // (an open error, counted); none is skipped or unreadable.
        let losses = pc.losses();
        assert_eq!((losses.threads_skipped, losses.read_errors), (0, 0));
        let (b, a) = (&before[0], &after[0]);
        assert!(cpu >= 100_000_000);
        assert!(
            a.task_clock_ns >= b.task_clock_ns + cpu * 95 / 100,
            "{cpu}: {b:?} -> {a:?}"
        );
        assert!(
            a.context_switches >= b.context_switches + 20,
            "{b:?} -> {a:?}"
        );
        assert!(!a.comm.is_empty());
        pc.set_pids(&[]);
        assert!(pc.read().is_empty());
    }

    /// Pids past the cap are counted as skipped, not opened.
    #[test]
    fn pid_cap() {
        let mut pc = ProcessCounters::new();
        let pids: Vec<u32> = (1..=(MAX_PIDS as u32 + 5)).collect();
        pc.set_pids(&pids);
        assert_eq!(pc.procs.len(), MAX_PIDS);
        assert_eq!(pc.losses().pids_skipped, 5);
    }
}
