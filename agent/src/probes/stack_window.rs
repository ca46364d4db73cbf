//! Reading an in-kernel stack-count map window by window, without
//! detaching, shared by the CPU and off-CPU components.
//!
//! # Why generations
//! A per-CPU hash offers no atomic read-and-reset (aya 0.14 has no
//! `lookup_and_delete` for it, and a program that looked a value up just
//! before a delete still writes into it afterwards). So every key carries
//! the generation the program read from its config when it counted:
//! 1. the agent bumps the generation;
//! 2. it waits [`SETTLE`], so that programs that read the old generation
//!    have finished (perf-event and scheduler programs run with preemption
//!    off, in microseconds);
//! 3. it reads and deletes the keys of older generations, which nothing
//!    writes any more: nothing counted between the read and the delete is
//!    lost. A key written late with an old generation (a program preempted
//!    by a hypervisor for longer than `SETTLE`) is not lost either: it is
//!    read by the next window.
//!
//! The cost is one more `u32` in each key and a 2 ms sleep per window.
//!
//! Stack ids no longer referenced by any key are then freed from the
//! stack-trace map ([`FramePointerStacks::forget`]), so a long-running
//! component does not fill it (a full map means collisions: lost stacks).

use std::{collections::HashSet, hash::Hash, time::Duration};

use aya::{
    Pod,
    maps::{Map, PerCpuHashMap, PerCpuValues},
};

use super::{
    ProbeError, map_err,
    unwind::{FramePointerStacks, StackSource},
};

/// How long programs that read the previous generation may still be
/// running: they run with preemption disabled for microseconds; 2 ms is
/// three orders of magnitude of margin and invisible in a 60 s window.
pub const SETTLE: Duration = Duration::from_millis(2);

/// Keys of one generation-stamped count map.
pub trait WindowKey: Pod + Eq + Hash {
    fn pid(&self) -> u32;
    fn generation(&self) -> u32;
    /// The (user, kernel) stack ids the key refers to.
    fn stack_ids(&self) -> [i32; 2];
}

/// Reads and deletes every key of `map` whose generation is not `keep`
/// (every key when `keep` is `None`: after the programs are detached);
/// returns them with their per-CPU values.
pub fn drain<K: WindowKey, V: Pod>(
    map: &mut Map,
    name: &'static str,
    keep: Option<u32>,
) -> Result<Vec<(K, PerCpuValues<V>)>, ProbeError> {
    let mut counts: PerCpuHashMap<&mut aya::maps::MapData, K, V> =
        PerCpuHashMap::try_from(map).map_err(map_err(name))?;
    // Keys first: deleting while walking with get_next_key restarts the
    // walk from the first key.
    let old: Vec<K> = counts
        .keys()
        .filter_map(Result::ok)
        .filter(|k| Some(k.generation()) != keep)
        .collect();
    let mut out = Vec::with_capacity(old.len());
    for key in old {
        match counts.get(&key, 0) {
            Ok(values) => out.push((key, values)),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
        counts.remove(&key).map_err(map_err(name))?;
    }
    Ok(out)
}

/// Pids and stack ids referenced by the keys left in `map` (the current
/// generation): their stacks and mappings must outlive this window.
pub fn still_referenced<K: WindowKey, V: Pod>(
    map: &Map,
    name: &'static str,
) -> Result<(HashSet<u32>, HashSet<i32>), ProbeError> {
    let counts: PerCpuHashMap<&aya::maps::MapData, K, V> =
        PerCpuHashMap::try_from(map).map_err(map_err(name))?;
    let mut pids = HashSet::new();
    let mut ids = HashSet::new();
    for key in counts.keys().filter_map(Result::ok) {
        pids.insert(key.pid());
        ids.extend(key.stack_ids());
    }
    Ok((pids, ids))
}

/// The stack-trace map of a long-running component, with the lookups that
/// failed counted by reason.
pub struct StackTable {
    source: FramePointerStacks,
    /// Ids read in this window, to free once nothing refers to them.
    read: HashSet<i32>,
    lost: LostStacks,
}

/// Stack lookups that failed since the last window, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LostStacks {
    /// The id was no longer in the stack-trace map (freed after a window
    /// while a newer key still referred to it, or replaced).
    pub not_found: u64,
    /// The lookup itself failed (any other error of the bpf syscall).
    pub error: u64,
}

impl LostStacks {
    /// Appends the non-zero counts to `drops` under their stable names.
    pub fn report(self, drops: &mut Vec<(&'static str, u64)>) {
        if self.not_found > 0 {
            drops.push(("stack_lookup_not_found", self.not_found));
        }
        if self.error > 0 {
            drops.push(("stack_lookup_error", self.error));
        }
    }
}

impl StackTable {
    #[must_use]
    pub fn new(source: FramePointerStacks) -> Self {
        Self {
            source,
            read: HashSet::new(),
            lost: LostStacks::default(),
        }
    }

    /// Frames of `id`, leaf first; empty (and counted) when the lookup
    /// fails, empty (not counted) for "no stack of this kind".
    pub fn frames(&mut self, id: i32) -> Vec<u64> {
        match self.source.frames(id) {
            Ok(frames) => {
                if !frames.is_empty() {
                    self.read.insert(id);
                }
                frames
            }
            Err(ProbeError::Map {
                source: aya::maps::MapError::KeyNotFound,
                ..
            }) => {
                self.lost.not_found += 1;
                Vec::new()
            }
            Err(_) => {
                self.lost.error += 1;
                Vec::new()
            }
        }
    }

    /// Frees the ids read this window that no remaining key refers to, and
    /// returns (and resets) the lookups lost this window.
    pub fn end_window(&mut self, live: &HashSet<i32>) -> LostStacks {
        for id in self.read.drain() {
            if !live.contains(&id) {
                self.source.forget(id);
            }
        }
        std::mem::take(&mut self.lost)
    }
}

/// Turns cumulative kernel counters into per-window deltas.
#[derive(Debug, Default)]
pub struct CounterBaseline {
    last: std::collections::HashMap<&'static str, u64>,
}

impl CounterBaseline {
    /// What each counter gained since the previous call (non-zero only).
    pub fn delta(&mut self, cumulative: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for &(name, value) in cumulative {
            let before = self.last.insert(name, value).unwrap_or(0);
            if value > before {
                out.push((name, value - before));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows report what each counter gained, not its running total.
    #[test]
    fn counters_are_reported_per_window() {
        let mut base = CounterBaseline::default();
        assert_eq!(base.delta(&[("a", 3)]), [("a", 3)]);
        assert_eq!(base.delta(&[("a", 3), ("b", 1)]), [("b", 1)]);
        assert_eq!(base.delta(&[("a", 10), ("b", 1)]), [("a", 7)]);
    }

    /// Lost lookups are reported under stable names, zero ones left out.
    #[test]
    fn lost_stacks_have_stable_names() {
        let mut drops = Vec::new();
        LostStacks {
            not_found: 2,
            error: 0,
        }
        .report(&mut drops);
        assert_eq!(drops, [("stack_lookup_not_found", 2)]);
    }
}
