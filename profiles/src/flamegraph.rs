//! Interactive SVG flame graphs, rendered by inferno from folded stacks.
//!
//! inferno's output embeds its JavaScript, so the SVG opened in a browser
//! supports click-to-zoom and Ctrl-F search with no other files.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::folded::folded_stacks;
use crate::{Profile, ProfileError};

/// Renders value `sample_index` of `profile` as an SVG flame graph into `out`.
///
/// Widths are the summed values; the tooltip unit is the sample type's unit
/// (`nanoseconds`, `count`, ...). Colours are derived from a hash of each
/// function name, so the same function keeps its colour across renders.
///
/// Fails with [`ProfileError::Render`] when `sample_index` is out of range or
/// there is nothing positive to draw (inferno would otherwise emit an
/// "ERROR: No valid input provided" SVG and a vaguer error).
pub fn render_svg(
    profile: &Profile,
    sample_index: usize,
    title: &str,
    out: &mut impl Write,
) -> Result<(), ProfileError> {
    let Some(value_type) = profile.sample_types.get(sample_index) else {
        return Err(ProfileError::Render(format!(
            "sample type index {sample_index} out of range (the profile has {} sample types)",
            profile.sample_types.len()
        )));
    };
    // Flame graph widths cannot be negative (diff profiles); drop those stacks.
    let lines: Vec<String> = folded_stacks(profile, sample_index)
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(frames, value)| format!("{} {value}", frames.join(";")))
        .collect();
    if lines.is_empty() {
        return Err(ProfileError::Render(format!(
            "profile has no samples for {}",
            value_type.r#type
        )));
    }

    let mut options = Options::default();
    title.clone_into(&mut options.title);
    options.count_name = if value_type.unit.is_empty() {
        "samples".to_owned()
    } else {
        value_type.unit.clone()
    };
    options.hash = true;
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| ProfileError::Render(format!("writing SVG failed: {e}")))
}

/// Renders what changed from `before` to `after` (value `sample_index` of
/// each) as a differential flame graph (inferno's differential mode):
/// widths are `after`'s, red where `after` spends more, blue where less.
/// `before` is normalized to `after`'s total, so a longer or busier
/// capture does not paint everything red.
///
/// Fails with [`ProfileError::Render`] when `after` has nothing to draw.
pub fn render_diff_svg(
    before: &Profile,
    after: &Profile,
    sample_index: usize,
    title: &str,
    out: &mut impl Write,
) -> Result<(), ProfileError> {
    let folded = |p: &Profile| -> Vec<u8> {
        let mut text = Vec::new();
        for (frames, value) in folded_stacks(p, sample_index) {
            if value > 0 {
                text.extend_from_slice(format!("{} {value}\n", frames.join(";")).as_bytes());
            }
        }
        text
    };
    let (old, new) = (folded(before), folded(after));
    if new.is_empty() {
        return Err(ProfileError::Render(
            "the later profile has no samples".into(),
        ));
    }
    let mut diff = Vec::new();
    let options = inferno::differential::Options {
        normalize: true,
        ..inferno::differential::Options::default()
    };
    inferno::differential::from_readers(options, &old[..], &new[..], &mut diff)
        .map_err(|e| ProfileError::Render(format!("differential stacks: {e}")))?;
    let text = String::from_utf8_lossy(&diff);
    let mut options = Options::default();
    title.clone_into(&mut options.title);
    options.count_name = after
        .sample_types
        .get(sample_index)
        .map_or_else(|| "samples".to_owned(), |t| t.unit.clone());
    flamegraph::from_lines(&mut options, text.lines(), out)
        .map_err(|e| ProfileError::Render(format!("writing SVG failed: {e}")))
}
