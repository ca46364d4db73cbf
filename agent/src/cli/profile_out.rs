//! Profile writing for the `record` commands not yet moved onto
//! [`crate::export::profile`] (record memory): the same code, with a
//! symbolizer made for the one capture.

use anyhow::Context as _;
use profiles::Profile;

pub use crate::export::profile::{Outputs, shape, value_type};
use crate::{
    aggregate::stacks::StackCounts,
    export::profile,
    probes::process_maps::ProcessMaps,
    symbolize::{ProfileShape, Symbolizer},
};

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
    let profile = profile::build(&mut Symbolizer::new(), stacks, maps, shape);
    profile::write(&profile, outputs, title, index).context("writing the profile")?;
    Ok(profile)
}
