//! `cargo xtask bench memory`: what a malloc+free pair costs under the
//! memory profiler.
//!
//! A malloc/free loop (`tests/fixtures/mem_churn.c`) measures the CPU time
//! of a pair (traps are charged to the loop's thread, and CPU time is not
//! inflated by other work preempting it on a busy machine), in one run and
//! interleaved round by round: untraced; under `qprof record memory
//! --pid`; under bpftrace counting malloc and free by user stack (the
//! peer); and under empty bpftrace probes that price the traps: a uprobe
//! on `malloc` (first instruction `push`, which the kernel emulates: one
//! trap), on `free` (`test`, single-stepped: two traps), and a uprobe plus
//! uretprobe on `malloc`. qprof's floor is two emulated traps and a
//! uretprobe per pair (it probes `free` past its `test`). Target (issue
//! 5): qprof <= bpftrace.
//!
//! The loop runs on a private copy of libc (`LD_LIBRARY_PATH`): uprobes
//! are attached to a file, and bpftrace attaches host-wide, so on the
//! system libc it would trap in every process on the machine.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::process::{Running, Scratch, wait_for_text};
use crate::util::{self, run_cmd};

/// Pairs per measurement: ~0.5-1 s traced on this machine.
const PAIRS: u64 = 200_000;
const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    MallocUprobe,
    FreeUprobe,
    MallocUprobeRet,
    Qprof,
    Bpftrace,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Untraced,
        Mode::Qprof,
        Mode::Bpftrace,
        Mode::MallocUprobe,
        Mode::FreeUprobe,
        Mode::MallocUprobeRet,
    ];

    /// The bpftrace program of this mode, for a libc at `lib`.
    fn bpftrace_script(self, lib: &Path) -> Option<String> {
        let lib = lib.display();
        match self {
            Mode::Untraced | Mode::Qprof => None,
            // `pid == 0` never holds: the programs run but do nothing.
            Mode::MallocUprobe => Some(format!(
                "uprobe:{lib}:malloc /pid == 0/ {{ @a = count(); }}"
            )),
            Mode::FreeUprobe => Some(format!("uprobe:{lib}:free /pid == 0/ {{ @a = count(); }}")),
            Mode::MallocUprobeRet => Some(format!(
                "uprobe:{lib}:malloc /pid == 0/ {{ @a = count(); }} \
                 uretprobe:{lib}:malloc /pid == 0/ {{ @b = count(); }}"
            )),
            Mode::Bpftrace => Some(format!(
                "uprobe:{lib}:malloc {{ @[ustack] = count(); }} \
                 uprobe:{lib}:free {{ @f[ustack] = count(); }}"
            )),
        }
    }
}

pub fn run() -> anyhow::Result<ExitCode> {
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
    let scratch = Scratch::create("memory")?;
    let fixture = scratch.path("mem_churn");
    let src = util::workspace_root().join("tests/fixtures/mem_churn.c");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-fno-omit-frame-pointer", "-o"])
            .arg(&fixture)
            .arg(&src),
    )?;
    let lib_dir = private_libc(&scratch)?;
    let mut results: Vec<(Mode, Vec<f64>)> = Mode::ALL.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..ROUNDS {
        for (mode, samples) in &mut results {
            let ns = measure(*mode, &qprof, &fixture, &lib_dir, &scratch)?;
            eprintln!("  round {}: {:?}: {ns:.0} ns/pair", round + 1, mode);
            samples.push(ns);
        }
    }
    let median = |mode: Mode| {
        let mut v = results
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    report(&median);
    Ok(ExitCode::SUCCESS)
}

fn report(median: &dyn Fn(Mode) -> f64) {
    let base = median(Mode::Untraced);
    let added = |m: Mode| median(m) - base;
    let (q, b) = (added(Mode::Qprof), added(Mode::Bpftrace));
    let (trap, stepped, with_ret) = (
        added(Mode::MallocUprobe),
        added(Mode::FreeUprobe),
        added(Mode::MallocUprobeRet),
    );
    let floor = with_ret + trap;
    println!(
        "malloc+free loop, {PAIRS} pairs of 16..1039 bytes on a private libc, CPU time of the loop, \
         median of {ROUNDS} interleaved rounds:"
    );
    println!("| condition | ns/pair | added ns/pair |");
    println!("| --- | --- | --- |");
    println!("| untraced | {base:.0} | - |");
    let row = |name: &str, m: Mode| {
        println!("| {name} | {:.0} | {:.0} |", median(m), added(m));
    };
    row(
        "qprof record memory --pid (--sample-bytes 512K)",
        Mode::Qprof,
    );
    row(
        "bpftrace: count by ustack on malloc and free",
        Mode::Bpftrace,
    );
    row(
        "empty uprobe on malloc (push: emulated, 1 trap)",
        Mode::MallocUprobe,
    );
    row(
        "empty uprobe on free (test: single-stepped, 2 traps)",
        Mode::FreeUprobe,
    );
    row("empty uprobe + uretprobe on malloc", Mode::MallocUprobeRet);
    println!(
        "trap floor per allocation (malloc+free pair): qprof 2 traps + 1 uretprobe = {floor:.0} ns \
         (trap {trap:.0} ns, uretprobe {:.0} ns); bpftrace's probes 3 traps = {:.0} ns",
        with_ret - trap,
        trap + stepped
    );
    println!(
        "qprof above its trap floor: {:.0} ns/pair; qprof added / bpftrace added = {:.2} (target <= 1: {})",
        q - floor,
        q / b,
        if q <= b { "met" } else { "NOT met" }
    );
}

/// Copies the system libc into `<scratch>/lib` and returns that directory.
fn private_libc(scratch: &Scratch) -> anyhow::Result<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so.6"))
        .context("this process maps no libc.so.6")?;
    let dir = scratch.path("lib");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(libc, dir.join("libc.so.6")).with_context(|| format!("copying {libc}"))?;
    Ok(dir)
}

/// One loop run under `mode`; returns CPU ns per pair as the fixture
/// measured it.
fn measure(
    mode: Mode,
    qprof: &Path,
    fixture: &Path,
    lib_dir: &Path,
    scratch: &Scratch,
) -> anyhow::Result<f64> {
    let mut loop_run = Running::spawn(
        Command::new(fixture)
            .arg(PAIRS.to_string())
            .env("LD_LIBRARY_PATH", lib_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
        "mem_churn",
        None,
    )?;
    let child = loop_run.child_mut()?;
    let mut stdin = child.stdin.take().context("fixture stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("fixture stdout")?).lines();
    let ready = lines.next().context("fixture exited")??;
    let pid: u32 = ready
        .strip_prefix("ready pid=")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("unexpected fixture output {ready:?}"))?;
    let lib = lib_dir.join("libc.so.6");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if !maps.contains(&lib.display().to_string()) {
        bail!(
            "the loop does not run on the private libc {}",
            lib.display()
        );
    }
    let tracer = start_tracer(mode, qprof, pid, &lib, scratch)?;
    writeln!(stdin, "go").context("starting the loop")?;
    let result = lines.next().context("fixture exited")??;
    if let Some(tracer) = tracer {
        stop(tracer)?;
    }
    // "cpu_ns_per_pair=X wall_ns_per_pair=Y"
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("cpu_ns_per_pair="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected loop output {result:?}"))
}

fn start_tracer(
    mode: Mode,
    qprof: &Path,
    pid: u32,
    lib: &Path,
    scratch: &Scratch,
) -> anyhow::Result<Option<Running>> {
    let log = scratch.path("tracer.log");
    if mode == Mode::Qprof {
        let mut cmd = Command::new(qprof);
        cmd.args(["record", "memory", "--duration", "10m", "--pid"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(scratch.path("memory.pb.gz"));
        let tracer = Running::spawn(&mut cmd, "qprof", Some(&log))?;
        wait_for_text(&log, "qprof: recording")?;
        return Ok(Some(tracer));
    }
    let Some(script) = mode.bpftrace_script(lib) else {
        return Ok(None);
    };
    let out_path = scratch.path("bpftrace.out");
    let out = std::fs::File::create(&out_path).context("bpftrace output")?;
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", &script]).stdout(out);
    let tracer = Running::spawn(&mut cmd, "bpftrace", Some(&log))?;
    wait_for_text(&out_path, "Attaching")?;
    Ok(Some(tracer))
}

/// Ctrl-C, repeated: bpftrace 0.17 now and then misses the first SIGINT
/// and would wait forever. Past three tries the guard kills it.
fn stop(mut tracer: Running) -> anyhow::Result<()> {
    for _ in 0..3 {
        tracer.signal(libc::SIGINT)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tracer.child_mut()?.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
