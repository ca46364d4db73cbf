//! Executable mappings of processes, snapshotted while they are alive.
//!
//! Symbolization happens after the capture; by then a short-lived process is
//! gone and its `/proc/<pid>/maps` with it. The sampler therefore snapshots a
//! process's mappings as soon as the kernel reports its first sample, and
//! again at the end for those still alive (to catch libraries loaded later).

use std::collections::HashMap;

/// Processes remembered per capture. A host with more live processes than
/// this sampled in one capture is unusual; past it, new processes are not
/// snapshotted (their frames fall back to raw addresses) and are counted.
pub const MAX_PROCESSES: usize = 16_384;
/// Executable mappings kept per process: large JVMs have a few thousand.
pub const MAX_MAPPINGS_PER_PROCESS: usize = 8_192;

/// One executable mapping of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Path as the process sees it, or a pseudo name such as `[vdso]`,
    /// `[anon]`; never empty.
    pub path: String,
    /// Inode, 0 for anonymous and pseudo mappings.
    pub inode: u64,
}

impl MapEntry {
    /// Whether this maps a real file that an ELF symbolizer can open.
    #[must_use]
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/') && !self.path.ends_with(" (deleted)")
    }

    /// File offset of an address inside this mapping.
    #[must_use]
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// Parses one line of `/proc/<pid>/maps`; `None` for non-executable or
/// malformed lines (the kernel's format is stable, so malformed means not
/// a maps file).
#[must_use]
pub fn parse_line(line: &str) -> Option<MapEntry> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset, _dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let path = fields.next().map_or("", str::trim);
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: if path.is_empty() {
            "[anon]".to_owned()
        } else {
            path.to_owned()
        },
        inode: inode.parse().ok()?,
    })
}

/// Parses a whole maps file, keeping executable mappings sorted by start.
#[must_use]
pub fn parse(text: &str) -> Vec<MapEntry> {
    let mut entries: Vec<MapEntry> = text
        .lines()
        .filter_map(parse_line)
        .take(MAX_MAPPINGS_PER_PROCESS)
        .collect();
    entries.sort_by_key(|e| e.start);
    entries
}

/// Mappings per process: of one capture, or (in a long-running component)
/// of the processes seen and not yet forgotten.
#[derive(Debug, Default, Clone)]
pub struct ProcessMaps {
    by_pid: HashMap<u32, Vec<MapEntry>>,
    /// Processes not snapshotted because the table was full.
    pub dropped: u64,
}

impl ProcessMaps {
    /// Reads `/proc/<pid>/maps` and merges it into what is known of `pid`.
    /// A process that is already gone is not an error: its samples keep
    /// their addresses.
    pub fn snapshot(&mut self, pid: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        self.merge(pid, parse(&text));
    }

    /// Adds mappings (from a snapshot) to those already known for `pid`.
    pub fn merge(&mut self, pid: u32, fresh: Vec<MapEntry>) {
        if !self.by_pid.contains_key(&pid) && self.by_pid.len() >= MAX_PROCESSES {
            self.dropped += 1;
            return;
        }
        let known = self.by_pid.entry(pid).or_default();
        for entry in fresh {
            if known.len() < MAX_MAPPINGS_PER_PROCESS && !known.contains(&entry) {
                known.push(entry);
            }
        }
        known.sort_by_key(|e| e.start);
    }

    /// The mapping holding `addr` in `pid`, newest snapshot first on overlap.
    #[must_use]
    pub fn find(&self, pid: u32, addr: u64) -> Option<&MapEntry> {
        let entries = self.by_pid.get(&pid)?;
        let idx = entries.partition_point(|e| e.start <= addr);
        entries[..idx].iter().rev().find(|e| addr < e.end)
    }

    /// Pids with a snapshot.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_pid.keys().copied()
    }

    /// Processes remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Forgets `pid` (a process that is gone and whose stacks were emitted).
    pub fn remove(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// Adds every process of `other` (a later slice of the same window).
    pub fn absorb(&mut self, other: ProcessMaps) {
        self.dropped += other.dropped;
        for (pid, entries) in other.by_pid {
            self.merge(pid, entries);
        }
    }

    /// A copy holding only `pids`: what one window's stacks need.
    #[must_use]
    pub fn subset(&self, pids: impl IntoIterator<Item = u32>) -> Self {
        let by_pid = pids
            .into_iter()
            .filter_map(|pid| Some((pid, self.by_pid.get(&pid)?.clone())))
            .collect();
        Self { by_pid, dropped: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234 /usr/bin/burn
55d0c0001000-55d0c0002000 r-xp 00001000 fd:01 1234 /usr/bin/burn
7f0000000000-7f0000100000 r-xp 00028000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 r-xp 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";

    /// Only executable mappings are kept; anonymous ones get a pseudo name.
    #[test]
    fn keeps_executable_mappings() {
        let entries = parse(MAPS);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/burn",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "[anon]",
                "[vdso]"
            ]
        );
        assert!(entries[0].is_file());
        assert!(!entries[2].is_file() && !entries[3].is_file());
    }

    /// Address lookup finds the right mapping and computes the file offset.
    #[test]
    fn finds_mapping_and_offset() {
        let mut maps = ProcessMaps::default();
        maps.merge(7, parse(MAPS));
        let e = maps.find(7, 0x7f00_0000_0010).expect("libc mapping");
        assert_eq!(e.file_offset(0x7f00_0000_0010), 0x28010);
        assert!(maps.find(7, 0x1000).is_none());
        assert!(maps.find(8, 0x7f00_0000_0010).is_none());
    }

    /// Garbage lines are skipped, never a panic.
    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse("not a maps file\n\u{0}\u{1}\nzz-yy r-xp q 0 0 /x\n").is_empty());
    }

    /// A window's subset carries only its processes; removing frees a slot.
    #[test]
    fn subset_and_remove() {
        let mut maps = ProcessMaps::default();
        maps.merge(7, parse(MAPS));
        maps.merge(8, parse(MAPS));
        let only7 = maps.subset([7, 9]);
        assert_eq!(only7.pids().collect::<Vec<_>>(), [7]);
        assert!(only7.find(7, 0x7f00_0000_0010).is_some());
        maps.remove(7);
        assert_eq!(maps.pids().collect::<Vec<_>>(), [8]);
    }

    /// The process table is bounded and counts what it refuses.
    #[test]
    fn table_is_bounded() {
        let mut maps = ProcessMaps::default();
        for pid in 0..=MAX_PROCESSES as u32 {
            maps.merge(pid, Vec::new());
        }
        assert_eq!(maps.dropped, 1);
    }
}
