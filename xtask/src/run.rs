//! `cargo xtask run -- ARGS`: set up, build release, exec qprof.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::{setup, util};

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    setup::ensure_build_tools()?;
    let qprof = util::build_qprof()?;
    if !util::is_root()
        && args
            .first()
            .is_some_and(|a| a != "flamegraph" && a != "--help" && a != "help")
    {
        bail!(
            "qprof loads BPF programs and must run as root: sudo -E cargo xtask run -- {}",
            args.join(" ")
        );
    }
    let status = Command::new(&qprof)
        .args(args)
        .status()
        .with_context(|| format!("running {}", qprof.display()))?;
    Ok(status
        .code()
        .map_or(ExitCode::FAILURE, |c| ExitCode::from(c as u8)))
}
