//! Folded stacks: one `root;caller;...;leaf count` line per distinct stack.
//!
//! This is the text format flamegraph.pl, inferno, speedscope and many other
//! tools read, and it is trivially diffable, which makes it the easiest way
//! to eyeball or test a profile.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::{Line, Location, Mapping, Profile, Sample};

/// Frame shown for a sample that has no stack at all, so the line still has a
/// non-empty stack field and stays parseable.
pub const NO_STACK: &str = "[no stack]";

/// Folded lines for value `sample_index` (e.g. the index of `cpu`).
///
/// Stacks are root first with inlined frames expanded (caller before callee);
/// identical stacks are merged by summing; stacks totalling 0 are dropped
/// (negative totals, e.g. from diff profiles, are kept). Lines are sorted
/// frame by frame so stacks sharing a prefix are adjacent, as flame graph
/// mergers require. An out-of-range `sample_index` yields no lines.
#[must_use]
pub fn folded_lines(profile: &Profile, sample_index: usize) -> Vec<String> {
    folded_stacks(profile, sample_index)
        .into_iter()
        .map(|(frames, value)| format!("{} {value}", frames.join(";")))
        .collect()
}

/// Writes [`folded_lines`] to `w`, one per line.
pub fn write_folded(profile: &Profile, sample_index: usize, w: &mut impl Write) -> io::Result<()> {
    for line in folded_lines(profile, sample_index) {
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// Merged stacks (root first) with their non-zero totals, sorted by frames.
pub(crate) fn folded_stacks(profile: &Profile, sample_index: usize) -> Vec<(Vec<String>, i64)> {
    let mut merged: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for sample in &profile.samples {
        let value = sample.values.get(sample_index).copied().unwrap_or(0);
        if value == 0 {
            continue;
        }
        let total = merged
            .entry(stack_frames(sample, &profile.mappings))
            .or_insert(0);
        *total = total.saturating_add(value);
    }
    merged.into_iter().filter(|(_, v)| *v != 0).collect()
}

/// Frame names of one sample, root first, each inlined caller before its
/// callee (the names folded lines and flame graphs show).
#[must_use]
pub fn stack_frames(sample: &Sample, mappings: &[Mapping]) -> Vec<String> {
    if sample.stack.is_empty() {
        return vec![NO_STACK.to_owned()];
    }
    let mut frames = Vec::with_capacity(sample.stack.len());
    for loc in sample.stack.iter().rev() {
        if loc.lines.is_empty() {
            frames.push(sanitize(loc.display_name(mappings)));
        }
        for line in loc.lines.iter().rev() {
            frames.push(sanitize(line_name(loc, line, mappings)));
        }
    }
    frames
}

fn line_name(loc: &Location, line: &Line, mappings: &[Mapping]) -> String {
    if !line.function.is_empty() {
        line.function.clone()
    } else if !line.system_name.is_empty() {
        line.system_name.clone()
    } else {
        loc.fallback_name(mappings)
    }
}

/// `;` separates frames and a newline ends the record, so neither may appear
/// inside a name.
fn sanitize(name: String) -> String {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ")
    } else {
        name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Guards that separators inside names cannot break the line format.
    #[test]
    fn sanitize_separators() {
        assert_eq!(sanitize("a;b\nc\rd".into()), "a:b c d");
        assert_eq!(sanitize("plain".into()), "plain");
    }

    /// Guards that an empty stack still yields a parseable line and that out-of-range indices yield nothing.
    #[test]
    fn empty_stack_and_bad_index() {
        let p = Profile {
            samples: vec![Sample {
                values: vec![3],
                ..Sample::default()
            }],
            ..Profile::default()
        };
        assert_eq!(folded_lines(&p, 0), vec!["[no stack] 3".to_string()]);
        assert!(folded_lines(&p, 1).is_empty());
    }
}
