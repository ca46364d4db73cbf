//! `qprof record tcp` (in progress).

use super::RecordTcpArgs;

pub fn run(_args: &RecordTcpArgs) -> anyhow::Result<()> {
    anyhow::bail!("record tcp is not implemented yet")
}
