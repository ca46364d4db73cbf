//! `cargo xtask bench ...`: each benchmark runs qprof and a named peer side
//! by side in one run and reports ratios (results go to BENCHMARKS.md).

mod agent;
mod agent_pgbench;
mod agent_report;
mod agent_watch;
mod cpu;
mod cpu_report;
mod cpu_runs;
mod memory;
mod offcpu;
mod perf_post;
mod postgres;
mod process;
mod queries;
mod queries_sqlite;
mod syscalls;
mod tcp;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// What `qprof agent`'s defaults cost the host (all parts, or one).
    Agent {
        /// Only this part.
        #[arg(value_enum)]
        part: Option<agent::Part>,
        /// How many times each condition runs (interleaved; medians are
        /// reported, since the machine is noisy).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Length of the run under the agent in the pgbench part (the
        /// untraced runs take as long together), in minutes.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
    },
    /// CPU profiling: fixture slowdown and qprof's own cost vs perf.
    Cpu {
        /// Length of each measured window (the fixture's run, and the part of
        /// each capture whose CPU cost is measured), in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// How many times each condition runs (interleaved; medians are
        /// reported, since the machine is noisy).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Syscall tracing: ns added per getppid vs untraced and vs bpftrace.
    Syscalls,
    /// Off-CPU profiling: context switches/s untraced vs under qprof.
    Offcpu,
    /// Memory profiling: ns per malloc+free pair vs untraced, the trap
    /// floor and bpftrace.
    Memory,
    /// TCP tracing: pgbench -S TPS untraced vs under `qprof record tcp`.
    Tcp,
    /// Query tracing: pgbench -S TPS and traps per query vs bpftrace.
    Queries,
    /// SQLite query tracing: statements/s and traps per execution.
    QueriesSqlite,
}

pub fn run(which: &Which) -> anyhow::Result<ExitCode> {
    match *which {
        Which::Agent {
            part,
            rounds,
            minutes,
        } => agent::run(part, rounds, minutes),
        Which::Cpu { seconds, rounds } => cpu::run(seconds, rounds),
        Which::Syscalls => syscalls::run(),
        Which::Offcpu => offcpu::run(),
        Which::Memory => memory::run(),
        Which::Tcp => tcp::run(),
        Which::Queries => queries::run(),
        Which::QueriesSqlite => queries_sqlite::run(),
    }
}
