//! SQLite query tracing: an in-memory insert/select loop through prepared
//! statements (`tests/fixtures/sqlite_bench.c`), in one run and
//! interleaved round by round: untraced; under the trap floor of qprof's
//! hot-path probe set (bpftrace with empty programs on `sqlite3_step`
//! entry and return and `sqlite3_reset` entry: what any design that times
//! executions from first step to done or reset pays); and under
//! `qprof record queries`. Reports ns per statement execution, the
//! statements/s ratio to untraced, and the probes run per execution,
//! counted by the kernel (`kernel.bpf_stats_enabled`, `bpftool`):
//! entry uprobes (each one a trap) apart from uretprobes (cheap with the
//! `uretprobe` syscall).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

use super::process::{BpfStats, Running, Scratch, wait_for_text};
use crate::util::{self, run_cmd};

/// Loop iterations per measurement (two executions each): ~0.1 s
/// untraced, ~0.5 s traced on this machine.
const ITERATIONS: u64 = 40_000;
const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    TrapFloor,
    Qprof,
}

/// One measurement: ns per execution, entry and return probe runs per
/// execution.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ns: f64,
    entries: f64,
    returns: f64,
}

pub fn run() -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("benchmarks load BPF programs: run as root");
    }
    install_missing(&[
        ("bpftrace", "bpftrace"),
        ("bpftool", "bpftool"),
        ("gcc", "gcc"),
    ])?;
    if !Path::new("/usr/include/sqlite3.h").is_file() {
        apt_install(&["libsqlite3-dev"])?;
    }
    let qprof = util::build_qprof()?;
    let scratch = Scratch::create("queries-sqlite")?;
    let fixture = build_fixture(&scratch)?;
    let lib = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0")
        .context("finding the system libsqlite3")?;
    let stats = BpfStats::enable()?;
    let mut results: Vec<(Mode, Vec<Sample>)> = [Mode::Untraced, Mode::TrapFloor, Mode::Qprof]
        .into_iter()
        .map(|m| (m, Vec::new()))
        .collect();
    let outcome = (|| {
        for round in 0..ROUNDS {
            for (mode, samples) in &mut results {
                let s = measure(*mode, &qprof, &fixture, &lib, &scratch)?;
                eprintln!(
                    "  round {}: {mode:?}: {:.0} ns/execution, {:.2} entry + {:.2} return probes/execution",
                    round + 1,
                    s.ns,
                    s.entries,
                    s.returns
                );
                samples.push(s);
            }
        }
        Ok::<(), anyhow::Error>(())
    })();
    drop(stats);
    outcome?;
    report(&results);
    Ok(ExitCode::SUCCESS)
}

fn report(results: &[(Mode, Vec<Sample>)]) {
    let median = |mode: Mode, pick: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, r)| r.iter().map(pick).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let base = median(Mode::Untraced, |s| s.ns);
    println!(
        "SQLite in-memory insert/select loop ({} executions), median of {ROUNDS} interleaved rounds:",
        2 * ITERATIONS
    );
    println!(
        "| condition | ns/execution | executions/s | ratio | entry traps/execution | uretprobes/execution |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (mode, label) in [
        (Mode::Untraced, "untraced"),
        (
            Mode::TrapFloor,
            "trap floor (bpftrace, empty programs, same probes)",
        ),
        (Mode::Qprof, "qprof record queries"),
    ] {
        let ns = median(mode, |s| s.ns);
        println!(
            "| {label} | {ns:.0} | {:.0} | {:.3} | {:.2} | {:.2} |",
            1e9 / ns,
            base / ns,
            median(mode, |s| s.entries),
            median(mode, |s| s.returns)
        );
    }
}

fn measure(
    mode: Mode,
    qprof: &Path,
    fixture: &Path,
    lib: &Path,
    scratch: &Scratch,
) -> anyhow::Result<Sample> {
    let log = scratch.path("tracer.log");
    let json = scratch.path("queries.json");
    let tracer = match mode {
        Mode::Untraced => None,
        Mode::TrapFloor => {
            let lib = lib.display();
            // `pid == 0` never holds: the programs run but do nothing.
            let script = format!(
                "uprobe:{lib}:sqlite3_step /pid == 0/ {{ @a = count(); }} \
                 uretprobe:{lib}:sqlite3_step /pid == 0/ {{ @b = count(); }} \
                 uprobe:{lib}:sqlite3_reset /pid == 0/ {{ @c = count(); }}"
            );
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", &script])
                .stdout(std::fs::File::create(&log).context("bpftrace output")?);
            Some((Running::spawn(&mut cmd, "bpftrace", None)?, "Attaching"))
        }
        Mode::Qprof => {
            let mut cmd = Command::new(qprof);
            cmd.args(["record", "queries", "--duration", "10m", "--json"])
                .arg(&json);
            Some((
                Running::spawn(&mut cmd, "qprof", Some(&log))?,
                "qprof: recording",
            ))
        }
    };
    if let Some((_, marker)) = &tracer {
        wait_for_text(&log, marker)?;
    }
    let before = probe_runs()?;
    let out = Command::new(fixture)
        .arg(ITERATIONS.to_string())
        .output()
        .context("running sqlite_bench")?;
    let after = probe_runs()?;
    if let Some((mut tracer, _)) = tracer {
        tracer.signal(libc::SIGINT)?;
        let _ = tracer.wait_cpu();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "sqlite_bench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ns = text
        .split("ns_per_execution=")
        .nth(1)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no ns_per_execution in {text:?}"))?;
    if mode == Mode::Qprof {
        check_counted(&json)?;
    }
    let executions = (2 * ITERATIONS) as f64;
    Ok(Sample {
        ns,
        entries: after.0.saturating_sub(before.0) as f64 / executions,
        returns: after.1.saturating_sub(before.1) as f64 / executions,
    })
}

/// qprof must have seen every execution, or its figures mean nothing.
fn check_counted(json: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(json)
        .with_context(|| format!("reading qprof's report {}", json.display()))?;
    for needle in ["INSERT INTO kv", "SELECT v FROM kv"] {
        let calls = text
            .split('}')
            .find(|row| row.contains(needle))
            .and_then(|row| row.split("\"calls\":").nth(1))
            .and_then(|rest| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse::<u64>().ok());
        if calls != Some(ITERATIONS) {
            bail!("qprof counted {calls:?} executions of {needle:?}, expected {ITERATIONS}");
        }
    }
    Ok(())
}

/// Runs of the BPF programs on SQLite (each run of an entry uprobe is one
/// trap): (entries, returns). qprof's programs are known by name (return
/// probes end in `_ret`); bpftrace names both kinds after the function, so
/// its programs are told apart by their attachments (`bpftool perf`).
fn probe_runs() -> anyhow::Result<(u64, u64)> {
    let perf = bpftool(&["perf", "show", "--json"])?;
    let mut attached: Vec<(u64, bool)> = Vec::new();
    for obj in perf.split("},{") {
        if !field(obj, "\"filename\":").is_some_and(|f| f.contains("libsqlite3")) {
            continue;
        }
        if let Some(id) = field(obj, "\"prog_id\":").and_then(|n| n.parse().ok()) {
            attached.push((id, field(obj, "\"fd_type\":") == Some("uretprobe")));
        }
    }
    let progs = bpftool(&["prog", "show", "--json"])?;
    let (mut entries, mut returns) = (0, 0);
    for obj in progs.split("},{") {
        let id: Option<u64> = field(obj, "\"id\":").and_then(|n| n.parse().ok());
        let name = field(obj, "\"name\":").unwrap_or_default();
        let ret = if name.starts_with("sqlite_") {
            name.ends_with("_ret")
        } else if let Some(&(_, ret)) = attached.iter().find(|(k, _)| Some(*k) == id) {
            ret
        } else {
            continue;
        };
        let runs = field(obj, "\"run_cnt\":")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if ret {
            returns += runs;
        } else {
            entries += runs;
        }
    }
    Ok((entries, returns))
}

/// bpftool's JSON output (no JSON dependency in xtask: objects are read
/// as flat text).
fn bpftool(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `key` in a flat JSON object: a number, or a string
/// without its quotes.
fn field<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
    let rest = obj.split(key).nth(1)?.trim_start();
    match rest.strip_prefix('"') {
        Some(s) => s.split('"').next(),
        None => rest.split(|c: char| !c.is_ascii_digit()).next(),
    }
}

fn build_fixture(scratch: &Scratch) -> anyhow::Result<PathBuf> {
    let src = util::workspace_root().join("tests/fixtures/sqlite_bench.c");
    let out = scratch.path("sqlite_bench");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-lsqlite3"),
    )?;
    Ok(out)
}

fn install_missing(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, prog)| !util::on_path(prog))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("bench: installing {}", packages.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields of bpftool's flat program objects, numbers and strings.
    #[test]
    fn reads_bpftool_fields() {
        let obj = r#""id":7,"type":"kprobe","name":"sqlite_step_ret","run_cnt":1234,"x":1"#;
        assert_eq!(field(obj, "\"name\":"), Some("sqlite_step_ret"));
        assert_eq!(field(obj, "\"run_cnt\":"), Some("1234"));
        assert_eq!(field(obj, "\"missing\":"), None);
    }
}
