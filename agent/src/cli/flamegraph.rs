//! `qprof flamegraph`: any pprof file to an interactive SVG.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

use super::FlamegraphArgs;
use crate::export::files;

pub fn run(args: &FlamegraphArgs) -> anyhow::Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.input));
    files::check_writable(&output)?;
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let mut profile = profiles::pprof::decode(&bytes)
        .with_context(|| format!("{} is not a readable pprof profile", args.input.display()))?;
    if let Some(query) = &args.query {
        profiles::filter::keep_query(&mut profile, query)
            .with_context(|| format!("no samples in {}", args.input.display()))?;
    }
    let wanted = args.sample_type.clone().unwrap_or_else(|| {
        if profile.default_sample_type.is_empty() {
            profile
                .sample_types
                .last()
                .map(|t| t.r#type.clone())
                .unwrap_or_default()
        } else {
            profile.default_sample_type.clone()
        }
    });
    let index = profile.sample_type_index(&wanted).ok_or_else(|| {
        let known: Vec<&str> = profile
            .sample_types
            .iter()
            .map(|t| t.r#type.as_str())
            .collect();
        anyhow!(
            "no sample type '{wanted}' in {}; it has: {}",
            args.input.display(),
            known.join(", ")
        )
    })?;
    let title = format!("{} ({wanted})", args.input.display());
    let mut svg = Vec::new();
    profiles::flamegraph::render_svg(&profile, index, &title, &mut svg)
        .with_context(|| format!("rendering {}", args.input.display()))?;
    files::write_private(&output, &svg)?;
    eprintln!("qprof: wrote {}", output.display());
    Ok(())
}

/// `cpu.pb.gz` -> `cpu.svg`, `x.pb` -> `x.svg`, anything else gets `.svg` appended.
fn default_output(input: &std::path::Path) -> PathBuf {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".pb.gz")
        .or_else(|| name.strip_suffix(".pb"))
        .or_else(|| name.strip_suffix(".gz"))
        .unwrap_or(&name);
    input.with_file_name(format!("{stem}.svg"))
}
