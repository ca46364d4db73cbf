//! The little of `/proc/kallsyms` off-CPU stacks need: function addresses
//! by name (to turn `/proc/<pid>/task/<tid>/stack` lines back into
//! addresses) and where `__schedule` ends (to cut the tracing frames above
//! it off the stacks walked inside the tracepoint). Root reads real
//! addresses; others read zeros, and then nothing here resolves.

use std::collections::HashMap;

/// Text symbols of the running kernel.
#[derive(Debug, Default)]
pub struct Kallsyms {
    by_name: HashMap<String, u64>,
    /// `[start, end)` of `__schedule`.
    schedule: Option<(u64, u64)>,
}

impl Kallsyms {
    /// Reads `/proc/kallsyms`; empty if unreadable.
    #[must_use]
    pub fn load() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Text symbols (`t`/`T`) with a non-zero address; the first of
    /// duplicate names wins (static functions can share a name).
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut by_name = HashMap::new();
        let mut starts = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(addr, 16)
                && addr != 0
            {
                by_name.entry(name.to_owned()).or_insert(addr);
                starts.push(addr);
            }
        }
        starts.sort_unstable();
        let schedule = by_name.get("__schedule").and_then(|&start| {
            let next = starts.partition_point(|&a| a <= start);
            starts.get(next).map(|&end| (start, end))
        });
        Self { by_name, schedule }
    }

    #[must_use]
    pub fn address(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    /// Drops the frames leafward of `__schedule`: in a stack walked from
    /// `sched_exit_tp` they are the BPF program and tracepoint plumbing,
    /// the same in every sample and of no interest. A stack without
    /// `__schedule` is kept whole.
    pub fn trim_to_schedule(&self, frames: &mut Vec<u64>) {
        let Some((start, end)) = self.schedule else {
            return;
        };
        // Return addresses point just past the call: inside the caller.
        if let Some(at) = frames.iter().position(|&ip| ip > start && ip <= end) {
            frames.drain(..at);
        }
    }

    /// `[<0>] pipe_read+0x1a3/0x4a0 [module]` lines (as in
    /// `/proc/<pid>/stack`) to addresses; unknown symbols are skipped.
    #[must_use]
    pub fn resolve_proc_stack(&self, text: &str) -> Vec<u64> {
        text.lines()
            .filter_map(|line| {
                let frame = line.split_whitespace().nth(1)?;
                let (name, rest) = frame.split_once('+')?;
                let offset = rest.split('/').next()?.strip_prefix("0x")?;
                let offset = u64::from_str_radix(offset, 16).ok()?;
                self.address(name).map(|base| base + offset)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "ffffffff81000000 T _stext\n\
        ffffffff81001000 t helper\n\
        ffffffff81002000 t helper\n\
        ffffffff81003000 T __schedule\n\
        ffffffff81003800 T schedule\n\
        ffffffff82000000 D some_data\n\
        0000000000000000 T hidden\n\
        garbage\n\
        ffffffffa0000000 t mod_fn\t[ext4]\n";

    #[test]
    fn keeps_text_symbols_first_wins() {
        let syms = Kallsyms::parse(TEXT);
        assert_eq!(syms.address("_stext"), Some(0xffff_ffff_8100_0000));
        assert_eq!(syms.address("helper"), Some(0xffff_ffff_8100_1000));
        assert_eq!(syms.address("mod_fn"), Some(0xffff_ffff_a000_0000));
        assert_eq!(syms.address("some_data"), None);
        assert_eq!(syms.address("hidden"), None);
        assert_eq!(
            syms.schedule,
            Some((0xffff_ffff_8100_3000, 0xffff_ffff_8100_3800))
        );
    }

    #[test]
    fn trims_tracing_frames_above_schedule() {
        let syms = Kallsyms::parse(TEXT);
        let mut frames = vec![
            0xffff_ffff_a000_0010,
            0xffff_ffff_8100_1010,
            0xffff_ffff_8100_3123,
            0xffff_ffff_8100_3810,
        ];
        syms.trim_to_schedule(&mut frames);
        assert_eq!(frames, vec![0xffff_ffff_8100_3123, 0xffff_ffff_8100_3810]);
        let mut without = vec![0xffff_ffff_8100_1010, 0xffff_ffff_8100_0010];
        syms.trim_to_schedule(&mut without);
        assert_eq!(without.len(), 2, "a stack without __schedule is kept whole");
    }

    #[test]
    fn proc_stack_lines_become_addresses() {
        let syms = Kallsyms::parse("0000000000001000 t pipe_read\n0000000000002000 T ksys_read\n");
        let text = "[<0>] pipe_read+0x1a3/0x4a0\n\
                    [<0>] unknown_fn+0x10/0x20\n\
                    [<0>] ksys_read+0x6d/0xf0 [mod]\n\
                    [<0>] malformed\n\
                    [<0>] ksys_read+zz/0x10\n";
        assert_eq!(syms.resolve_proc_stack(text), vec![0x11a3, 0x206d]);
    }
}
