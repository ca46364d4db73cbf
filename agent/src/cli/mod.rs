//! The command line: clap definitions and one module per subcommand.

mod agent;
mod capture_loop;
mod checks;
mod client;
mod flamegraph;
mod profile_out;
mod progress;
mod record_cpu;
mod record_memory;
mod record_offcpu;
mod record_queries;
mod record_syscalls;
mod record_tcp;
mod report;
pub mod values;

#[cfg(test)]
mod tests;

pub use record_memory::RecordMemoryArgs;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// eBPF host and query profiler: where does the time go?
#[derive(Debug, Parser)]
#[command(name = "qprof", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture a profile now, without a daemon (needs root).
    #[command(subcommand)]
    Record(Record),
    /// Run the always-on agent: continuous probes, metrics, profile store,
    /// capture API (needs root).
    Agent(agent::AgentArgs),
    /// Ask a running agent for a capture and download its files.
    Capture(client::CaptureArgs),
    /// The running agent's top queries.
    Top(client::TopArgs),
    /// Render a pprof file (qprof's or another tool's, gzip or not) as an
    /// interactive SVG flamegraph.
    Flamegraph(FlamegraphArgs),
}

#[derive(Debug, Subcommand)]
pub enum Record {
    /// Sample on-CPU stacks (user and kernel) host-wide or of given processes.
    Cpu(RecordCpuArgs),
    /// Profile blocked (off-CPU) time by stack: locks, disk, network, sleeps.
    Offcpu(RecordOffcpuArgs),
    /// Profile allocations of given processes by stack: bytes allocated and
    /// still in use, sampled by bytes in the kernel.
    Memory(RecordMemoryArgs),
    /// Per-query latency for PostgreSQL (`libpq`) and SQLite clients, grouped
    /// by normalized statement.
    Queries(RecordQueriesArgs),
    /// Count syscalls per process: calls, errors by errno, latency percentiles.
    Syscalls(RecordSyscallsArgs),
    /// TCP per remote endpoint: connects, connect latency, RTT, retransmits, resets.
    Tcp(RecordTcpArgs),
}

#[derive(Debug, Args)]
pub struct RecordOffcpuArgs {
    /// Profile only this process (repeatable); default: the whole host.
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// How long to record, e.g. 10s. Ctrl-C stops early and still writes.
    #[arg(long, default_value = "10s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Skip blocks shorter than this (in the kernel), e.g. 1ms, 100us... 0
    /// keeps every block. 1 ms by default: shorter waits are mostly
    /// scheduler noise and would dominate the event rate.
    #[arg(long, default_value = "1ms", value_parser = values::parse_min_block)]
    pub min_block: Duration,
    /// gzip-compressed pprof output.
    #[arg(short = 'o', long = "output", default_value = "offcpu.pb.gz")]
    pub output: PathBuf,
    /// Also write an interactive SVG flamegraph (of blocked time) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Also write folded stacks (blocked nanoseconds) here.
    #[arg(long)]
    pub folded: Option<PathBuf>,
    /// Trace libpq/SQLite queries too and label blocks inside one with its
    /// fingerprint id (`query` label; see `flamegraph --query`).
    #[arg(long)]
    pub by_query: bool,
}

#[derive(Debug, Args)]
pub struct RecordQueriesArgs {
    /// Trace only this process (repeatable); default: every process.
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// How long to trace, e.g. 10s; Ctrl-C stops early and still reports.
    #[arg(long, default_value = "10s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Write the report as JSON to FILE (`-` for stdout) instead of a table.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Rows in the table (sorted by total time).
    #[arg(long, default_value_t = 20, value_parser = values::parse_top)]
    pub top: usize,
    /// Keep and show query text with its literals (off by default: literals
    /// can be personal data; fingerprints replace them with `?`).
    #[arg(long)]
    pub raw_queries: bool,
}

#[derive(Debug, Args)]
pub struct RecordSyscallsArgs {
    /// Trace only this process (repeatable); default: every process.
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// Trace only processes whose name (comm, as in /proc/PID/comm) is NAME.
    #[arg(long, value_parser = values::parse_comm)]
    pub comm: Option<String>,
    /// Trace only this syscall, by name (repeatable), e.g. `openat`.
    #[arg(long = "syscall", value_name = "NAME")]
    pub syscalls: Vec<String>,
    /// How long to trace, e.g. 10s; Ctrl-C stops early and still reports.
    #[arg(long, default_value = "10s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Write the report as JSON to FILE (`-` for stdout) instead of a table.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Rows in the table (sorted by total time).
    #[arg(long, default_value_t = 20, value_parser = values::parse_top)]
    pub top: usize,
    /// `full` times every call (latency histograms); `counts` counts every
    /// call and error exactly but times only a sample of calls (the agent's
    /// cheap always-on mode).
    #[arg(long, value_enum, default_value_t = record_syscalls::Mode::Full)]
    pub mode: record_syscalls::Mode,
}

#[derive(Debug, Args)]
pub struct RecordTcpArgs {
    /// Attribute only connections owned by this process (repeatable).
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// How long to trace, e.g. 10s; Ctrl-C stops early and still reports.
    #[arg(long, default_value = "10s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Write the report as JSON to FILE (`-` for stdout) instead of a table.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecordCpuArgs {
    /// Profile only this process (repeatable); default: the whole host.
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// How long to sample, e.g. 500ms, 10s, 2m. Ctrl-C stops early and still
    /// writes what was collected.
    #[arg(long, default_value = "10s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Samples per second per CPU. 99, not 100: off the beat of timers and
    /// periodic work that run at round rates, so sampling does not lock step
    /// with them (the perf and parca-agent convention).
    #[arg(long, default_value_t = 99, value_parser = values::parse_hz)]
    pub hz: u64,
    /// gzip-compressed pprof output.
    #[arg(short = 'o', long = "output", default_value = "cpu.pb.gz")]
    pub output: PathBuf,
    /// Also write an interactive SVG flamegraph here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Also write folded stacks ("frame;frame count" lines) here.
    #[arg(long)]
    pub folded: Option<PathBuf>,
    /// Trace libpq/SQLite queries too and label samples taken inside one
    /// with its fingerprint id (`query` label; see `flamegraph --query`).
    #[arg(long)]
    pub by_query: bool,
    /// Keep samples of the idle task (pid 0, `swapper/N`): left out by
    /// default, as on a quiet host they are most samples and say only that
    /// the CPUs were idle.
    #[arg(long)]
    pub include_idle: bool,
}

#[derive(Debug, Args)]
pub struct FlamegraphArgs {
    /// pprof file (.pb.gz or raw .pb).
    pub input: PathBuf,
    /// SVG output; default: the input name with .svg.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Sample type to draw (e.g. cpu, samples); default: the profile's default.
    #[arg(long)]
    pub sample_type: Option<String>,
    /// Draw only samples taken inside this query (its 16-hex-digit
    /// `fingerprint_id`, as `record queries` prints it).
    #[arg(long, value_name = "FINGERPRINT_ID", value_parser = values::parse_fingerprint_id)]
    pub query: Option<String>,
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Record(Record::Cpu(args)) => record_cpu::run(&args),
        Command::Record(Record::Offcpu(args)) => record_offcpu::run(&args),
        Command::Record(Record::Memory(args)) => record_memory::run(&args),
        Command::Record(Record::Queries(args)) => record_queries::run(&args),
        Command::Record(Record::Syscalls(args)) => record_syscalls::run(&args),
        Command::Record(Record::Tcp(args)) => record_tcp::run(&args),
        Command::Flamegraph(args) => flamegraph::run(&args),
        Command::Agent(args) => agent::run(&args),
        Command::Capture(args) => client::capture(&args),
        Command::Top(args) => client::top(&args),
    }
}
