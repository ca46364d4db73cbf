//! Child processes for the benchmarks, and the CPU time they (and we) use.
//!
//! CPU time comes from the kernel's own accounting, never from wall clocks:
//! `/proc/<pid>/stat` while a child runs (clock ticks, 10 ms on this kernel)
//! and `wait4`'s rusage once it exits (the same counters, in microseconds,
//! including every thread and everything after the last `/proc` read).

use std::{
    fs::File,
    io::Read as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A spawned child that is killed and reaped if it is dropped before it was
/// waited for, so that an error half-way through a benchmark leaves no
/// tracer or fixture running.
pub struct Running {
    child: Option<Child>,
    name: String,
    log: Option<PathBuf>,
}

impl Running {
    /// Spawns `cmd`; `log` is where its stderr goes, quoted when it fails.
    pub fn spawn(cmd: &mut Command, name: &str, log: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(log) = log {
            let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            cmd.stderr(file);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The child itself, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> anyhow::Result<&mut Child> {
        self.child
            .as_mut()
            .with_context(|| format!("{} was already waited for", self.name))
    }

    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (the
        // guard still holds the child), so the pid cannot have been reused.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {}", self.name));
        }
        Ok(())
    }

    /// Fails, quoting the log, if the child has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let name = self.name.clone();
        if let Some(status) = self
            .child_mut()?
            .try_wait()
            .with_context(|| format!("polling {name}"))?
        {
            bail!("{name} exited early with {status}{}", self.log_tail());
        }
        Ok(())
    }

    /// Waits for the exit; returns the status and the child's total CPU time
    /// (user + system, all threads) from `wait4`.
    pub fn wait_cpu(&mut self) -> anyhow::Result<(ExitStatus, Duration)> {
        let pid = self.pid();
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero is a valid `rusage` (plain integers).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 on our own unreaped child, writing into the two
            // locals above, which outlive the call.
            let got = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
            if got == pid {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("waiting for {}", self.name));
            }
        }
        // Reaped: dropping the std handle now neither kills nor waits.
        self.child = None;
        Ok((
            ExitStatus::from_raw(status),
            timeval(usage.ru_utime) + timeval(usage.ru_stime),
        ))
    }

    /// The last lines of the child's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let mut text = String::new();
        if File::open(log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            return String::new();
        }
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "; its stderr ends:\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// CPU time a live process's threads have used so far, to the nanosecond:
/// the sum of their `sum_exec_runtime` (`/proc/<pid>/task/*/schedstat`),
/// the runtime `wait4` reports at exit. Threads that already exited are
/// missing; both tracers keep theirs for the whole run. Falls back to the
/// clock ticks of `/proc/<pid>/stat` where schedstat is not built in.
pub fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    let mut total = Duration::ZERO;
    for task in tasks.filter_map(Result::ok) {
        let nanos = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        match nanos {
            Some(nanos) => total += Duration::from_nanos(nanos),
            None => return cpu_ticks(pid),
        }
    }
    Ok(total)
}

/// CPU time (user + system, all threads, also those that already exited)
/// from `/proc/<pid>/stat`, in clock ticks (10 ms).
pub fn cpu_ticks(pid: i32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may contain anything: count
    // fields from the last ')'. utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_nanos(
        total * 1_000_000_000 / clock_ticks_per_second(),
    ))
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// CPU time this process (every thread of it) has used so far.
pub fn self_cpu() -> anyhow::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the local above.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading this process's CPU time");
    }
    Ok(Duration::from_secs(ts.tv_sec as u64) + Duration::from_nanos(ts.tv_nsec as u64))
}

/// CPU clock ticks (utime + stime + reaped children's) of every process
/// outside the trees rooted at `ours` (this benchmark and the postmaster)
/// and outside the kernel's threads.
pub fn foreign_ticks(ours: &[u32]) -> u64 {
    let mut parent = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state ppid ... utime(14)
        // stime(15) cutime(16) cstime(17), numbered from 1 with pid.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() > 14 {
            parent.insert(pid, f[0] as u32);
            ticks.insert(pid, f[10] + f[11] + f[12] + f[13]);
        }
    }
    let ours_or_kernel = |mut pid: u32| {
        for _ in 0..64 {
            if ours.contains(&pid) || pid == 2 {
                return true;
            }
            match parent.get(&pid) {
                Some(&p) if p != 0 => pid = p,
                _ => return false,
            }
        }
        false
    };
    ticks
        .iter()
        .filter(|(pid, _)| !ours_or_kernel(**pid))
        .map(|(_, t)| t)
        .sum()
}

/// Online CPUs: both tracers sample every one of them.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

/// How many `perf_event`s a process holds: as descriptors (perf) or
/// through the BPF links that own them (qprof, via aya).
fn perf_event_fds(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| {
                t.as_os_str() == "anon_inode:[perf_event]" || t.as_os_str() == "anon_inode:bpf_link"
            })
        })
        .count()
}

/// Waits until a tracer is sampling: it holds a `perf_event` descriptor per
/// CPU (both qprof and perf open one per CPU when they attach), and its
/// start-up work (BPF verification, perf's synthesis of existing
/// processes) is over: at most 10 ms of CPU in half a second.
/// Neither tool announces readiness, so this is what "started" means.
pub fn wait_ready(tracer: &mut Running, cpus: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(2);
    while perf_event_fds(tracer.pid()) < cpus {
        tracer.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not open its perf events within 2 minutes{}",
                tracer.name,
                tracer.log_tail()
            );
        }
        sleep(Duration::from_millis(20));
    }
    let settle_by = Instant::now() + Duration::from_secs(10);
    let tick = Duration::from_millis(10);
    let mut before = cpu_time(tracer.pid())?;
    loop {
        sleep(Duration::from_millis(500));
        tracer.check_alive()?;
        let now = cpu_time(tracer.pid())?;
        if now.saturating_sub(before) <= tick || Instant::now() > settle_by {
            return Ok(());
        }
        before = now;
    }
}

/// Busy and total CPU time of the whole machine so far, in clock ticks,
/// from the first line of /proc/stat (time the hypervisor stole counts as
/// busy: it is not ours either).
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4))
        .map(|(_, v)| v)
        .sum();
    let total: u64 = fields.iter().take(8).sum();
    Ok((busy, total))
}

/// Waits (at most `patience`) until the machine is quiet: less than
/// `max_busy` of it busy over three seconds (builds pause for a second
/// between crates). Returns whether it got quiet.
pub fn wait_for_quiet(max_busy: f64, patience: Duration) -> anyhow::Result<bool> {
    let give_up = Instant::now() + patience;
    let mut said = false;
    loop {
        let (busy0, total0) = machine_ticks()?;
        sleep(Duration::from_secs(3));
        let (busy1, total1) = machine_ticks()?;
        let busy = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
        if busy <= max_busy {
            return Ok(true);
        }
        if Instant::now() > give_up {
            return Ok(false);
        }
        if !said {
            eprintln!(
                "  waiting for the machine to quiet down ({:.0}% busy)",
                busy * 100.0
            );
            said = true;
        }
    }
}

/// `kernel.bpf_stats_enabled` turned on for a benchmark (the kernel then
/// counts each program's runs and run time) and put back as it was when
/// dropped: it costs every program run two clock reads, so a host's owner
/// may well keep it off.
pub struct BpfStats {
    before: String,
}

/// Where the switch lives.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let before =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").context("enabling BPF run statistics")?;
        Ok(Self { before })
    }

    /// Whether the switch is still on: anyone may write 0 to it meanwhile
    /// (another benchmark ending), and run counts stop from then on.
    pub fn still_on() -> bool {
        std::fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() == "1")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}

/// A scratch directory, removed with everything in it when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("qprof-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (at most a minute) until `path` contains `needle`: tracers say
/// when they are attached (qprof: "qprof: recording", bpftrace:
/// "Attaching"), then a moment for the last CPU to pick the programs up.
pub fn wait_for_text(path: &Path, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(1);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            sleep(Duration::from_millis(300));
            return Ok(());
        }
        sleep(Duration::from_millis(50));
    }
    bail!("never saw {needle:?} in {}", path.display())
}
