//! `qprof record syscalls`: per process and syscall, calls, errors by
//! errno, total time and latency percentiles. A thin driver over the
//! [`SyscallTracer`] component.

use anyhow::{Context as _, bail};

use super::{RecordSyscallsArgs, capture_loop, checks, report};
use crate::{
    aggregate::{
        names::{similar_syscalls, syscall_number},
        syscalls::SyscallRow,
    },
    probes::{
        component::Component as _,
        syscalls::{SyscallConfig, SyscallMode, SyscallTracer},
    },
};

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every call timed.
    Full,
    /// Exact counts, a sample of calls timed (the agent's default).
    Counts,
    /// Empty programs that record nothing: the benchmarks' floor.
    #[value(hide = true)]
    Floor,
}

impl From<Mode> for SyscallMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Full => Self::Full,
            Mode::Counts => Self::default(),
            Mode::Floor => Self::Floor,
        }
    }
}

pub fn run(args: &RecordSyscallsArgs) -> anyhow::Result<()> {
    let config = validate(args)?;
    let tracer = SyscallTracer::start(&config).context("starting the syscall tracer")?;
    let (table, ended) = capture_loop::record(tracer, args.duration, "(pid, syscall) pairs")?;
    let rows = table.rows();
    match &args.json {
        Some(path) => report::write_json(path, &rows)?,
        None => print!("{}", render(&rows, args.top)),
    }
    eprintln!(
        "qprof: {} calls in {} (pid, syscall) pairs over {:.1}s",
        rows.iter().map(|r| r.calls).sum::<u64>(),
        rows.len(),
        ended.elapsed.as_secs_f64()
    );
    if !table.drops.is_empty() {
        let lost: Vec<String> = table
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!(
            "qprof: some data could not be kept (maps full): {}",
            lost.join(", ")
        );
    }
    Ok(())
}

/// Every check that can fail before tracing starts.
fn validate(args: &RecordSyscallsArgs) -> anyhow::Result<SyscallConfig> {
    checks::pids_exist(&args.pids)?;
    let mut syscalls = Vec::new();
    for name in &args.syscalls {
        let Some(nr) = syscall_number(name) else {
            let hints = similar_syscalls(name);
            let hint = if hints.is_empty() {
                String::new()
            } else {
                format!("; did you mean {}?", hints.join(", "))
            };
            bail!("unknown syscall '{name}' (x86_64 names, e.g. openat, getppid){hint}");
        };
        syscalls.push(nr);
    }
    if let Some(comm) = &args.comm
        && !any_process_named(comm)
    {
        eprintln!("qprof: no running process is named '{comm}' yet; tracing any that starts");
    }
    if let Some(path) = &args.json {
        report::check_json_target(path)?;
    }
    checks::privileges_and_kernel()?;
    Ok(SyscallConfig {
        pids: args.pids.clone(),
        comm: args.comm.clone(),
        syscalls,
        mode: args.mode.into(),
    })
}

fn any_process_named(comm: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
}

/// The table: top `top` rows by total time.
pub(crate) fn render(rows: &[SyscallRow], top: usize) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .take(top)
        .map(|r| {
            let errors: u64 = r.errors.values().sum();
            let top_errno = r
                .errors
                .iter()
                .max_by_key(|(_, c)| **c)
                .map(|(n, _)| format!(" ({n})"))
                .unwrap_or_default();
            vec![
                r.pid.to_string(),
                r.comm.clone(),
                r.syscall.clone(),
                r.calls.to_string(),
                if errors == 0 {
                    "0".to_owned()
                } else {
                    format!("{errors}{top_errno}")
                },
                report::human_ns(r.total_ns),
                report::human_ns(r.p50_ns),
                report::human_ns(r.p95_ns),
                report::human_ns(r.p99_ns),
                report::human_ns(r.max_ns),
            ]
        })
        .collect();
    report::table(
        &[
            "PID", "COMM", "SYSCALL", "CALLS", "ERRORS", "TOTAL", "P50", "P95", "P99", "MAX",
        ],
        &body,
    )
}
