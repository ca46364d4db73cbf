//! Host CPU and memory and the heaviest processes, from `sysinfo`.
//!
//! Sampled by the agent on its own timer (a scrape never walks /proc):
//! CPU usage is a rate between two samples, so the interval is the
//! agent's choice, not the scraper's.

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use super::MetricsError;
use super::labels::label_value;

/// Processes reported by default, by CPU and by RSS (so up to twice this):
/// the handful that explain a busy host, without a series per process.
pub const DEFAULT_TOP_PROCESSES: usize = 10;

/// Bytes of a process name label (a comm is at most 15).
const COMM_BYTES: usize = 64;

/// One process among the heaviest.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    pub pid: u32,
    pub comm: String,
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// One host sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSnapshot {
    /// Busy fraction of all CPUs since the previous sample (0..=1).
    pub cpu_usage_ratio: f64,
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// The top processes by CPU since the previous sample, then by RSS.
    pub processes: Vec<ProcessSample>,
}

/// Keeps the `sysinfo` state between samples (CPU usage needs two).
#[derive(Debug)]
pub struct HostSampler {
    sys: System,
    top: usize,
}

impl HostSampler {
    /// A sampler reporting the `top` heaviest processes by CPU and by RSS.
    pub fn new(top: usize) -> Result<Self, MetricsError> {
        Ok(Self {
            sys: System::new().map_err(|e| MetricsError::Sysinfo(e.to_string()))?,
            top,
        })
    }

    /// Refreshes CPU, memory and every process's CPU time and RSS.
    pub fn sample(&mut self) -> HostSnapshot {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                // Threads would be listed as processes of their own (and
                // walked: /proc/PID/task of every process).
                .without_tasks(),
        );
        HostSnapshot {
            cpu_usage_ratio: f64::from(self.sys.global_cpu_usage() / 100.0).clamp(0.0, 1.0),
            cpus: self.sys.cpus().len(),
            memory_total_bytes: self.sys.total_memory(),
            memory_available_bytes: self.sys.available_memory(),
            swap_total_bytes: self.sys.total_swap(),
            swap_used_bytes: self.sys.used_swap(),
            processes: self.top_processes(),
        }
    }

    fn top_processes(&self) -> Vec<ProcessSample> {
        let mut all: Vec<(f32, u64, u32)> = self
            .sys
            .processes()
            .iter()
            // Kernel threads (and user threads, were tasks listed) are not
            // processes a user can act on.
            .filter(|(_, p)| p.thread_kind().is_none())
            .map(|(pid, p)| (p.cpu_usage(), p.memory(), pid.as_u32()))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut pids: Vec<u32> = all.iter().take(self.top).map(|t| t.2).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        for t in all.iter().take(self.top) {
            if !pids.contains(&t.2) {
                pids.push(t.2);
            }
        }
        pids.into_iter()
            .filter_map(|pid| {
                let p = self.sys.process(sysinfo::Pid::from_u32(pid))?;
                Some(ProcessSample {
                    pid,
                    comm: label_value(&p.name().to_string_lossy(), COMM_BYTES),
                    cpu_seconds: p.accumulated_cpu_time() as f64 / 1_000.0,
                    rss_bytes: p.memory(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample sees this host's memory and CPUs, includes this test
    /// process among the top by RSS when asked for enough, and stays
    /// within twice the cap.
    #[test]
    fn samples_this_host() {
        let Ok(mut s) = HostSampler::new(500) else {
            panic!("sysinfo");
        };
        let _ = s.sample();
        let start = std::time::Instant::now();
        let snap = s.sample();
        eprintln!(
            "host sample: {:?}, {} processes listed",
            start.elapsed(),
            snap.processes.len()
        );
        assert!(
            snap.memory_total_bytes > 0 && snap.memory_available_bytes <= snap.memory_total_bytes
        );
        assert!(snap.cpus >= std::thread::available_parallelism().map_or(1, usize::from));
        let me = std::process::id();
        let mine = snap.processes.iter().find(|p| p.pid == me);
        assert!(
            mine.is_some_and(|p| p.rss_bytes > 0),
            "{:?}",
            snap.processes.len()
        );
        let Ok(mut small) = HostSampler::new(2) else {
            panic!("sysinfo");
        };
        assert!(small.sample().processes.len() <= 4);
    }
}
