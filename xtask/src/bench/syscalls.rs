//! `cargo xtask bench syscalls`: the cost a traced syscall pays.
//!
//! A `getppid` loop measures CPU ns per syscall, in one run and interleaved
//! round by round: untraced; under `qprof record syscalls` host-wide
//! (full mode: every call timed); under bpftrace counting by pid on enter and
//! exit (the peer); and under qprof filtered to another process (`--pid 1`),
//! which must cost the loop almost nothing. Targets (issue 3): qprof adds
//! <= 200 ns and <= 0.5x what bpftrace adds; filtered <= 60 ns.
//!
//! The loop itself ([`LoopBench`]) is shared with `bench agent`, which
//! compares the agent's cheap default mode with the floor.

use std::{
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, bail};

use super::process::{Running, Scratch, wait_for_text};
use crate::util::{self, run_cmd};

/// Calls per measurement: ~1 s untraced on this machine.
const CALLS: u64 = 5_000_000;
const ROUNDS: usize = 3;

const BPFTRACE: &str = "tracepoint:raw_syscalls:sys_enter { @enter[pid] = count(); } \
                        tracepoint:raw_syscalls:sys_exit { @exit[pid] = count(); }";

/// What runs beside the loop.
#[derive(Clone, Debug)]
pub enum Tracer {
    Untraced,
    /// `qprof record syscalls` with these extra arguments.
    Qprof(&'static [&'static str]),
    /// bpftrace with this program.
    Bpftrace(&'static str),
}

/// The getppid loop, built once, and the qprof binary.
pub struct LoopBench {
    qprof: PathBuf,
    fixture: PathBuf,
    scratch: Scratch,
    calls: u64,
}

impl LoopBench {
    /// Checks root, installs bpftrace if missing, builds qprof and the loop.
    pub fn prepare(tag: &str, calls: u64) -> anyhow::Result<Self> {
        if !util::is_root() {
            bail!("benchmarks load BPF programs: run as root");
        }
        crate::test::install_test_packages()?;
        if !util::on_path("bpftrace") {
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "bpftrace"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        }
        let qprof = util::build_qprof()?;
        let scratch = Scratch::create(tag)?;
        let fixture = scratch.path("getppid_loop");
        let src = util::workspace_root().join("tests/fixtures/getppid_loop.c");
        run_cmd(
            Command::new("gcc")
                .args(["-O2", "-o"])
                .arg(&fixture)
                .arg(&src),
        )?;
        Ok(Self {
            qprof,
            fixture,
            scratch,
            calls,
        })
    }

    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// One loop run beside `tracer` (attached first): the loop's CPU time
    /// (user + system, from `wait4`) per call. CPU time rather than the wall
    /// clock: on a shared machine the loop is often descheduled, and that
    /// wait is not a cost of tracing; the programs run in the loop's own
    /// context, so their time is in its system time.
    pub fn measure(&self, tracer: &Tracer) -> anyhow::Result<f64> {
        let log = self.scratch.path("tracer.log");
        let running = match tracer {
            Tracer::Untraced => None,
            Tracer::Qprof(extra) => {
                let mut cmd = Command::new(&self.qprof);
                cmd.args(["record", "syscalls", "--duration", "10m", "--json"])
                    .arg(self.scratch.path("out.json"))
                    .args(*extra);
                let running = Running::spawn(&mut cmd, "qprof", Some(&log))?;
                wait_for_text(&log, "qprof: recording")?;
                Some(running)
            }
            Tracer::Bpftrace(program) => {
                let out_path = self.scratch.path("bpftrace.out");
                let out = std::fs::File::create(&out_path).context("bpftrace output")?;
                let mut cmd = Command::new("bpftrace");
                cmd.args(["-e", program]).stdout(out);
                let running = Running::spawn(&mut cmd, "bpftrace", Some(&log))?;
                wait_for_text(&out_path, "Attaching")?;
                Some(running)
            }
        };
        let mut cmd = Command::new(&self.fixture);
        cmd.arg(self.calls.to_string()).stdout(Stdio::null());
        let mut fixture = Running::spawn(&mut cmd, "getppid loop", None)?;
        let (status, cpu) = fixture.wait_cpu()?;
        if let Some(running) = running {
            stop_tracer(running)?;
        }
        if !status.success() {
            bail!("the getppid loop failed: {status}");
        }
        Ok(cpu.as_secs_f64() * 1e9 / self.calls as f64)
    }
}

/// Stops a tracer with SIGINT, repeated every second: bpftrace has been
/// seen to miss the first one now and then and wait for ever. After ten
/// tries it is killed (dropping `Running` kills and reaps).
fn stop_tracer(mut tracer: Running) -> anyhow::Result<()> {
    for _ in 0..10 {
        tracer.signal(libc::SIGINT)?;
        for _ in 0..20 {
            if tracer.child_mut()?.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    eprintln!("  (tracer ignored SIGINT for 10 s; killed)");
    Ok(())
}

/// The median (NaN for no samples).
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let bench = LoopBench::prepare("syscalls", CALLS)?;
    let conditions = [
        ("untraced", Tracer::Untraced),
        ("qprof", Tracer::Qprof(&[])),
        ("bpftrace", Tracer::Bpftrace(BPFTRACE)),
        ("qprof --pid 1", Tracer::Qprof(&["--pid", "1"])),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); conditions.len()];
    for round in 0..ROUNDS {
        for ((name, tracer), samples) in conditions.iter().zip(&mut samples) {
            let ns = bench.measure(tracer)?;
            eprintln!("  round {}: {name}: {ns:.1} ns/call", round + 1);
            samples.push(ns);
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let base = medians[0];
    let (q, b, f) = (medians[1] - base, medians[2] - base, medians[3] - base);
    println!("getppid loop, {CALLS} calls, median of {ROUNDS} interleaved rounds:");
    println!("| condition | ns/call | added ns | target |");
    println!("| --- | --- | --- | --- |");
    println!("| untraced | {base:.1} | - | - |");
    println!(
        "| qprof record syscalls (host-wide) | {:.1} | {q:.1} | <= 200 ns: {} |",
        base + q,
        verdict(q <= 200.0)
    );
    println!(
        "| bpftrace count by pid, enter+exit | {:.1} | {b:.1} | (peer) |",
        base + b
    );
    println!(
        "| qprof --pid 1 (another process) | {:.1} | {f:.1} | <= 60 ns: {} |",
        base + f,
        verdict(f <= 60.0)
    );
    println!(
        "qprof added / bpftrace added = {:.2} (target <= 0.5: {})",
        q / b,
        verdict(q / b <= 0.5)
    );
    Ok(ExitCode::SUCCESS)
}
