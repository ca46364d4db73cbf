//! Checks every `record` command runs before it attaches anything, so a bad
//! value or a missing privilege costs nothing and loses nothing.

use std::path::Path;

use anyhow::bail;

use crate::probes::preflight;

/// Every pid must name a live process.
pub fn pids_exist(pids: &[u32]) -> anyhow::Result<()> {
    for pid in pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
    }
    Ok(())
}

/// Capabilities, BTF, and tracefs (mounted when missing, and said so).
pub fn privileges_and_kernel() -> anyhow::Result<()> {
    preflight::check_capabilities()?;
    preflight::check_btf()?;
    if preflight::ensure_tracefs()? {
        eprintln!("qprof: mounted tracefs at {}", preflight::TRACEFS);
    }
    Ok(())
}
