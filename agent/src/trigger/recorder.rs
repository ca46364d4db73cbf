//! The flight recorder: the last minute (configurable) of the continuous
//! low-rate CPU samples, kept in memory so that a triggered capture can
//! show what ran *before* the breach.
//!
//! Compact: frame names are interned once (u32 ids), stacks are interned
//! as slices of frame ids, and each one-second slice is only a list of
//! (stack, pid, count) triples, 12 bytes each. Bounded: slices older than
//! the span are dropped, and when the interners outgrow their caps they
//! are rebuilt from the slices still kept (what only old slices used goes).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use profiles::{Label, LabelValue, Line, Location, Profile, Sample, ValueType};

/// Distinct stacks kept before a rebuild: a busy host's minute at 19 Hz on
/// a few CPUs is ~2,300 samples per CPU, so 50,000 distinct stacks is
/// already every sample of 20 CPUs being different.
const MAX_STACKS: usize = 50_000;
/// Distinct frame names kept before a rebuild (names average ~40 bytes:
/// 100,000 of them is ~6 MB with the map).
const MAX_FRAMES: usize = 100_000;

struct Slice {
    start_ms: u64,
    end_ms: u64,
    /// (stack id, pid, samples).
    entries: Vec<(u32, u32, u32)>,
}

/// The recorder. Not shared across threads by itself: the agent wraps it in
/// a mutex.
pub struct FlightRecorder {
    span_ms: u64,
    period_ns: i64,
    frames: Vec<Arc<str>>,
    frame_ids: HashMap<Arc<str>, u32>,
    stacks: Vec<Box<[u32]>>,
    stack_ids: HashMap<Box<[u32]>, u32>,
    slices: VecDeque<Slice>,
    /// Samples not kept because the interners were full even after a
    /// rebuild (`flight_recorder_full`).
    pub dropped: u64,
}

impl FlightRecorder {
    /// Keeps `span_ms` of slices whose samples each stand for `period_ns`.
    #[must_use]
    pub fn new(span_ms: u64, period_ns: i64) -> Self {
        Self {
            span_ms,
            period_ns,
            frames: Vec::new(),
            frame_ids: HashMap::new(),
            stacks: Vec::new(),
            stack_ids: HashMap::new(),
            slices: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Adds one slice (a symbolized profile whose value 0 is the sample
    /// count and whose samples carry a `pid` label).
    pub fn push(&mut self, start_ms: u64, end_ms: u64, slice: &Profile) {
        while self
            .slices
            .front()
            .is_some_and(|s| s.end_ms + self.span_ms <= end_ms)
        {
            self.slices.pop_front();
        }
        if self.stacks.len() >= MAX_STACKS || self.frames.len() >= MAX_FRAMES {
            self.rebuild();
        }
        let mut entries = Vec::with_capacity(slice.samples.len());
        for sample in &slice.samples {
            let count = sample.values.first().copied().unwrap_or(0);
            let Ok(count) = u32::try_from(count) else {
                continue;
            };
            let pid = pid_of(sample);
            let frames = profiles::folded::stack_frames(sample, &slice.mappings);
            match self.intern_stack(&frames) {
                Some(id) => entries.push((id, pid, count)),
                None => self.dropped += u64::from(count),
            }
        }
        entries.shrink_to_fit();
        self.slices.push_back(Slice {
            start_ms,
            end_ms,
            entries,
        });
    }

    fn intern_stack(&mut self, frames: &[String]) -> Option<u32> {
        let mut ids = Vec::with_capacity(frames.len());
        for f in frames {
            let id = if let Some(&id) = self.frame_ids.get(f.as_str()) {
                id
            } else {
                if self.frames.len() >= MAX_FRAMES {
                    return None;
                }
                let name: Arc<str> = Arc::from(f.as_str());
                let id = u32::try_from(self.frames.len()).ok()?;
                self.frames.push(name.clone());
                self.frame_ids.insert(name, id);
                id
            };
            ids.push(id);
        }
        let ids: Box<[u32]> = ids.into_boxed_slice();
        if let Some(&id) = self.stack_ids.get(&ids) {
            return Some(id);
        }
        if self.stacks.len() >= MAX_STACKS {
            return None;
        }
        let id = u32::try_from(self.stacks.len()).ok()?;
        self.stacks.push(ids.clone());
        self.stack_ids.insert(ids, id);
        Some(id)
    }

    /// Re-interns what the kept slices use, forgetting the rest.
    fn rebuild(&mut self) {
        let old_stacks = std::mem::take(&mut self.stacks);
        let old_frames = std::mem::take(&mut self.frames);
        self.stack_ids.clear();
        self.frame_ids.clear();
        let mut slices = std::mem::take(&mut self.slices);
        for slice in &mut slices {
            slice.entries.retain_mut(|(stack, _, _)| {
                let Some(ids) = old_stacks.get(*stack as usize) else {
                    return false;
                };
                let names: Vec<String> = ids
                    .iter()
                    .filter_map(|&f| old_frames.get(f as usize).map(ToString::to_string))
                    .collect();
                match self.intern_stack(&names) {
                    Some(id) => {
                        *stack = id;
                        true
                    }
                    None => false,
                }
            });
        }
        self.slices = slices;
    }

    /// Bytes the recorder holds (approximate: payloads plus the maps'
    /// entries), for the `qprof_flight_recorder_bytes` gauge.
    #[must_use]
    pub fn bytes(&self) -> usize {
        let frames: usize = self.frames.iter().map(|f| f.len() + 16 + 8 + 16 + 4).sum();
        let stacks: usize = self
            .stacks
            .iter()
            .map(|s| 2 * (s.len() * 4 + 16) + 4 + 8)
            .sum();
        let slices: usize = self
            .slices
            .iter()
            .map(|s| s.entries.capacity() * 12 + 48)
            .sum();
        frames + stacks + slices
    }

    /// Samples kept, for tests and logs.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.slices
            .iter()
            .flat_map(|s| &s.entries)
            .map(|e| u64::from(e.2))
            .sum()
    }

    /// The kept samples of `pids` (all when empty) in slices ending at or
    /// before `to_ms`, as a CPU profile (samples, cpu nanoseconds).
    #[must_use]
    pub fn profile(&self, pids: &[u32], to_ms: u64) -> Profile {
        let mut merged: HashMap<(u32, u32), i64> = HashMap::new();
        let mut first = u64::MAX;
        let mut last = 0;
        for slice in self.slices.iter().filter(|s| s.end_ms <= to_ms) {
            first = first.min(slice.start_ms);
            last = last.max(slice.end_ms);
            for &(stack, pid, count) in &slice.entries {
                if pids.is_empty() || pids.contains(&pid) {
                    *merged.entry((stack, pid)).or_insert(0) += i64::from(count);
                }
            }
        }
        let samples = merged
            .into_iter()
            .filter_map(|((stack, pid), count)| {
                let ids = self.stacks.get(stack as usize)?;
                Some(Sample {
                    stack: ids
                        .iter()
                        .rev()
                        .map(|&f| Location {
                            lines: vec![Line {
                                function: self
                                    .frames
                                    .get(f as usize)
                                    .map(ToString::to_string)
                                    .unwrap_or_default(),
                                ..Line::default()
                            }],
                            ..Location::default()
                        })
                        .collect(),
                    values: vec![count, count * self.period_ns],
                    labels: vec![Label::num("pid", i64::from(pid), "")],
                })
            })
            .collect();
        let first = if first == u64::MAX { to_ms } else { first };
        Profile {
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: self.period_ns,
            time_nanos: first as i64 * 1_000_000,
            duration_nanos: last.saturating_sub(first) as i64 * 1_000_000,
            samples,
            comments: vec!["qprof flight recorder: the samples before the breach".into()],
            ..Profile::default()
        }
    }
}

fn pid_of(sample: &Sample) -> u32 {
    sample
        .labels
        .iter()
        .find_map(|l| match (&*l.key, &l.value) {
            ("pid", LabelValue::Num { value, .. }) => u32::try_from(*value).ok(),
            ("pid", LabelValue::Str(s)) => s.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
