//! Process memory over time: RSS and, where readable, PSS (the process's
//! fair share of pages it shares with others) from procfs, read about once
//! a second during a capture.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::aggregate::memory::Series;

/// How often memory usage is read: `smaps_rollup` walks the page tables
/// (and takes the mmap lock), so not more often than this.
pub const EVERY: Duration = Duration::from_secs(1);

/// One reading, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub rss: u64,
    pub pss: Option<u64>,
}

/// Parses `/proc/<pid>/smaps_rollup` (`Rss:` and `Pss:` lines, in kB).
#[must_use]
pub fn parse_smaps_rollup(text: &str) -> Option<Reading> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Reading {
        rss: field("Rss:")?,
        pss: field("Pss:"),
    })
}

/// Parses `/proc/<pid>/statm` (resident pages is the second field).
#[must_use]
pub fn parse_statm(text: &str, page_size: u64) -> Option<Reading> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reading {
        rss: pages * page_size,
        pss: None,
    })
}

/// Reads `pid`'s memory now; `None` once it has exited (a zombie has no
/// mappings, so no RSS line).
#[must_use]
pub fn read(pid: u32) -> Option<Reading> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        && let Some(reading) = parse_smaps_rollup(&text)
    {
        return Some(reading);
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    // SAFETY: sysconf only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    parse_statm(&text, u64::try_from(page).unwrap_or(4096)).filter(|r| r.rss > 0)
}

/// RSS and PSS series of one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessUsage {
    pub rss: Series,
    pub pss: Series,
    /// No reading could be taken at the last attempt (the process exited).
    pub gone: bool,
}

/// The usage of every target process through a capture.
#[derive(Debug)]
pub struct UsageWatch {
    by_pid: BTreeMap<u32, ProcessUsage>,
    last: Option<Instant>,
}

impl UsageWatch {
    #[must_use]
    pub fn new(pids: &[u32]) -> Self {
        Self {
            by_pid: pids.iter().map(|&p| (p, ProcessUsage::default())).collect(),
            last: None,
        }
    }

    /// Reads every process if [`EVERY`] has passed since the last reading.
    pub fn tick(&mut self) {
        if self.last.is_none_or(|t| t.elapsed() >= EVERY) {
            self.sample();
        }
    }

    /// Reads every process now.
    pub fn sample(&mut self) {
        self.last = Some(Instant::now());
        for (&pid, usage) in &mut self.by_pid {
            match read(pid) {
                Some(r) => {
                    usage.rss.add(r.rss);
                    if let Some(pss) = r.pss {
                        usage.pss.add(pss);
                    }
                    usage.gone = false;
                }
                None => usage.gone = true,
            }
        }
    }

    /// Reads every process now and returns the series since the last
    /// call (a window); the next window's series start from this reading.
    pub fn take(&mut self) -> Vec<(u32, ProcessUsage)> {
        self.sample();
        self.by_pid
            .iter_mut()
            .map(|(&pid, usage)| {
                let mut next = ProcessUsage {
                    gone: usage.gone,
                    ..ProcessUsage::default()
                };
                if let Some(rss) = usage.rss.end {
                    next.rss.add(rss);
                }
                if let Some(pss) = usage.pss.end {
                    next.pss.add(pss);
                }
                (pid, std::mem::replace(usage, next))
            })
            .collect()
    }

    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessUsage)> {
        self.by_pid.iter().map(|(&p, u)| (p, u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's rollup format gives RSS and PSS in bytes.
    #[test]
    fn parses_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:               10240 kB\nPss:                8192 kB\nPss_Anon:           100 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Some(Reading {
                rss: 10 << 20,
                pss: Some(8 << 20)
            })
        );
        assert_eq!(parse_smaps_rollup(""), None);
        assert_eq!(parse_smaps_rollup("Rss: lots\n"), None);
    }

    /// statm's second field is resident pages.
    #[test]
    fn parses_statm() {
        assert_eq!(
            parse_statm("100 25 3 1 0 20 0\n", 4096).map(|r| r.rss),
            Some(25 * 4096)
        );
        assert_eq!(parse_statm("x", 4096), None);
    }

    /// This process has a resident set; a missing one reads as gone.
    #[test]
    fn watches_processes() {
        let me = std::process::id();
        let mut watch = UsageWatch::new(&[me, u32::MAX - 3]);
        watch.tick();
        watch.tick(); // within a second: no second reading
        let got: Vec<(u32, ProcessUsage)> =
            watch.processes().map(|(p, u)| (p, u.clone())).collect();
        assert_eq!(got[0].1.rss.readings, 1);
        assert!(got[0].1.rss.peak.unwrap_or(0) > 0);
        assert!(got[1].1.gone);
        let window = watch.take();
        assert_eq!(window[0].1.rss.readings, 2);
        assert!(window[1].1.gone);
        // The next window starts from the reading that ended this one.
        let next = watch.take();
        assert_eq!(next[0].1.rss.readings, 2);
        assert_eq!(next[0].1.rss.start, window[0].1.rss.end);
    }
}
