//! `qprof record syscalls` (in progress).

use super::RecordSyscallsArgs;

pub fn run(_args: &RecordSyscallsArgs) -> anyhow::Result<()> {
    anyhow::bail!("record syscalls is not implemented yet")
}
