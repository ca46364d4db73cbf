//! Stack profiles out: built from stack counts and process mappings with a
//! caller's (long-lived) symbolizer, encoded as gzip pprof, SVG flamegraph
//! and folded stacks — as bytes in memory (for the agent's store, its HTTP
//! API and a push) or as files written 0600 and atomically (`record`).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use profiles::{Profile, ValueType};

use super::files::{self, FileError};
use crate::{
    aggregate::stacks::StackCounts,
    probes::process_maps::ProcessMaps,
    symbolize::{ProfileShape, Symbolizer},
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("encoding pprof: {0}")]
    Encode(#[source] profiles::ProfileError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Where a profile goes (`-o`, `--svg`, `--folded`).
#[derive(Debug, Clone)]
pub struct Outputs {
    pub pprof: PathBuf,
    pub svg: Option<PathBuf>,
    pub folded: Option<PathBuf>,
}

impl Outputs {
    /// Checks every path before the capture starts.
    pub fn check(&self) -> Result<(), FileError> {
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

/// The profile's value types and time frame.
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

/// Symbolizes `stacks` into a profile.
pub fn build(
    symbolizer: &mut Symbolizer,
    stacks: &StackCounts,
    maps: &ProcessMaps,
    shape: &ProfileShape,
) -> Profile {
    symbolizer.build_profile(stacks, maps, shape)
}

/// Gzip-compressed pprof bytes (what `go tool pprof`, Pyroscope and
/// Grafana read).
pub fn pprof_gzip(profile: &Profile) -> Result<Vec<u8>, ExportError> {
    profiles::pprof::encode_gzip(profile).map_err(ExportError::Encode)
}

/// An interactive SVG flamegraph of value `index`; fails when there is
/// nothing to draw (no positive value).
pub fn svg(
    profile: &Profile,
    index: usize,
    title: &str,
) -> Result<Vec<u8>, profiles::ProfileError> {
    let mut svg = Vec::new();
    profiles::flamegraph::render_svg(profile, index, title, &mut svg)?;
    Ok(svg)
}

/// Folded stacks ("frame;frame value" lines) of value `index`.
#[must_use]
pub fn folded(profile: &Profile, index: usize) -> Vec<u8> {
    let mut text = profiles::folded::folded_lines(profile, index).join("\n");
    text.push('\n');
    text.into_bytes()
}

/// Writes `profile` to every requested output. The SVG and the folded
/// stacks show value `index` (e.g. the time, not the count). An empty
/// profile has no flamegraph: that is said, not an error.
pub fn write(
    profile: &Profile,
    outputs: &Outputs,
    title: &str,
    index: usize,
) -> Result<(), ExportError> {
    files::write_private(&outputs.pprof, &pprof_gzip(profile)?)?;
    if let Some(svg_path) = &outputs.svg {
        match svg(profile, index, title) {
            Ok(bytes) => files::write_private(svg_path, &bytes)?,
            Err(err) => eprintln!(
                "qprof: no flamegraph written to {}: {err}",
                svg_path.display()
            ),
        }
    }
    if let Some(folded_path) = &outputs.folded {
        files::write_private(folded_path, &folded(profile, index))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::stacks::RawStack;

    fn one_stack() -> StackCounts {
        let mut stacks = StackCounts::default();
        stacks.add(RawStack {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            user: vec![0x1000],
            kernel: Vec::new(),
            values: vec![3, 30],
            labels: Vec::new(),
        });
        stacks
    }

    /// The bytes API round-trips through the pprof decoder, and the files
    /// written are those bytes, 0600.
    #[test]
    fn bytes_and_files_agree() {
        let mut symbolizer = Symbolizer::new();
        let shape = shape(
            vec![
                value_type("samples", "count"),
                value_type("cpu", "nanoseconds"),
            ],
            value_type("cpu", "nanoseconds"),
            10,
            SystemTime::now(),
            Duration::from_secs(1),
        );
        let profile = build(
            &mut symbolizer,
            &one_stack(),
            &ProcessMaps::default(),
            &shape,
        );
        let bytes = pprof_gzip(&profile).expect("encode");
        let decoded = profiles::pprof::decode(&bytes).expect("decode");
        assert_eq!(decoded.total(1), 30);
        assert_eq!(
            String::from_utf8(folded(&profile, 0))
                .expect("utf8")
                .trim_end()
                .rsplit(' ')
                .next(),
            Some("3")
        );

        let dir = std::env::temp_dir().join(format!("qprof-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let outputs = Outputs {
            pprof: dir.join("p.pb.gz"),
            svg: None,
            folded: Some(dir.join("p.folded")),
        };
        write(&profile, &outputs, "t", 1).expect("write");
        let written = profiles::pprof::decode(&std::fs::read(&outputs.pprof).expect("read"))
            .expect("decode written");
        assert_eq!(written.total(1), 30);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
