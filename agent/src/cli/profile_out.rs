//! Writing a symbolized profile the way every `record` command that makes
//! one does: gzip pprof, and optionally an SVG flamegraph and folded stacks.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use profiles::{Profile, ValueType};

use crate::{
    aggregate::stacks::StackCounts,
    export::files,
    probes::process_maps::ProcessMaps,
    symbolize::{ProfileShape, Symbolizer},
};

/// Where a profile goes (`-o`, `--svg`, `--folded`).
#[derive(Debug, Clone)]
pub struct Outputs {
    pub pprof: PathBuf,
    pub svg: Option<PathBuf>,
    pub folded: Option<PathBuf>,
}

impl Outputs {
    /// Checks every path before the capture starts.
    pub fn check(&self) -> anyhow::Result<()> {
        for path in [Some(&self.pprof), self.svg.as_ref(), self.folded.as_ref()]
            .into_iter()
            .flatten()
        {
            files::check_writable(path)?;
        }
        Ok(())
    }
}

/// `("samples", "count")`-style value types.
#[must_use]
pub fn value_type(kind: &str, unit: &str) -> ValueType {
    ValueType {
        r#type: kind.to_owned(),
        unit: unit.to_owned(),
    }
}

/// The profile's time frame.
#[must_use]
pub fn shape(
    sample_types: Vec<ValueType>,
    period_type: ValueType,
    period: i64,
    started_at: SystemTime,
    elapsed: Duration,
) -> ProfileShape {
    ProfileShape {
        sample_types,
        period_type,
        period,
        time_nanos: started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: elapsed.as_nanos() as i64,
    }
}

/// Symbolizes `stacks` and writes every requested output. The SVG and the
/// folded stacks show value `index` (e.g. the time, not the count).
pub fn write(
    stacks: &StackCounts,
    maps: &ProcessMaps,
    shape: &ProfileShape,
    outputs: &Outputs,
    title: &str,
    index: usize,
) -> anyhow::Result<Profile> {
    let profile = Symbolizer::new().build_profile(stacks, maps, shape);
    let pprof = profiles::pprof::encode_gzip(&profile).context("encoding pprof")?;
    files::write_private(&outputs.pprof, &pprof)?;
    if let Some(svg_path) = &outputs.svg {
        let mut svg = Vec::new();
        match profiles::flamegraph::render_svg(&profile, index, title, &mut svg) {
            Ok(()) => files::write_private(svg_path, &svg)?,
            Err(err) => eprintln!(
                "qprof: no flamegraph written to {}: {err}",
                svg_path.display()
            ),
        }
    }
    if let Some(folded_path) = &outputs.folded {
        let mut text = profiles::folded::folded_lines(&profile, index).join("\n");
        text.push('\n');
        files::write_private(folded_path, text.as_bytes())?;
    }
    Ok(profile)
}
