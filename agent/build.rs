//! Builds the BPF programs in `ebpf/probes` for bpfel-unknown-none with the
//! nightly toolchain (aya-build) so that the agent can embed the object.
//! Needs rust-src on the nightly and bpf-linker on PATH: `cargo xtask setup`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let probes = metadata
        .packages
        .into_iter()
        .find(|p| p.name == "qprof-probes")
        .ok_or_else(|| anyhow!("package qprof-probes not found in the workspace"))?;
    let root = probes
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("qprof-probes manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: "qprof-probes",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
