//! `qprof record cpu`: validate everything, sample, symbolize, write.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use profiles::ValueType;

use super::{RecordCpuArgs, progress::Progress, values};
use crate::{
    export::files,
    probes::{
        cpu::{CpuCapture, CpuConfig, CpuSampler},
        preflight,
    },
    symbolize::{ProfileShape, Symbolizer},
};

/// How often the ring buffer of new processes is drained: fast enough to
/// snapshot the mappings of a process that lives a fraction of a second.
const POLL_EVERY: Duration = Duration::from_millis(100);

pub fn run(args: &RecordCpuArgs) -> anyhow::Result<()> {
    validate(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started_at = SystemTime::now();
    let (capture, elapsed, interrupted) = runtime.block_on(sample(args))?;
    if interrupted {
        eprintln!(
            "qprof: interrupted after {:.1}s; writing what was collected",
            elapsed.as_secs_f64()
        );
    }
    write_outputs(args, &capture, started_at, elapsed)
}

/// Every check that can fail before sampling starts, so that a bad value
/// costs nothing and no capture is thrown away at the end.
fn validate(args: &RecordCpuArgs) -> anyhow::Result<()> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}");
        }
    }
    if let Some(max) = values::max_sample_rate()
        && args.hz > max
    {
        bail!(
            "--hz {} is above the kernel's limit of {max} (kernel.perf_event_max_sample_rate)",
            args.hz
        );
    }
    for path in [Some(&args.output), args.svg.as_ref(), args.folded.as_ref()]
        .into_iter()
        .flatten()
    {
        files::check_writable(path)?;
    }
    preflight::check_capabilities()?;
    preflight::check_btf()?;
    if preflight::ensure_tracefs()? {
        eprintln!("qprof: mounted tracefs at {}", preflight::TRACEFS);
    }
    Ok(())
}

async fn sample(args: &RecordCpuArgs) -> anyhow::Result<(CpuCapture, Duration, bool)> {
    let config = CpuConfig {
        hz: args.hz,
        pids: args.pids.clone(),
    };
    let mut sampler = CpuSampler::start(&config).context("starting the CPU sampler")?;
    let start = Instant::now();
    let deadline = start + args.duration;
    let progress = Progress::new();
    let mut stop = std::pin::pin!(shutdown_signal());
    let mut tick = tokio::time::interval(POLL_EVERY);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => { interrupted = true; break; }
        }
        sampler.poll_new_processes();
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        progress.update(deadline - now, sampler.samples_so_far().unwrap_or(0));
    }
    progress.finish();
    let elapsed = start.elapsed();
    let capture = sampler
        .finish()
        .context("reading the capture out of the kernel")?;
    Ok((capture, elapsed, interrupted))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => _ = s.recv().await,
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn write_outputs(
    args: &RecordCpuArgs,
    capture: &CpuCapture,
    started_at: SystemTime,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let period = 1_000_000_000 / args.hz as i64;
    let shape = ProfileShape {
        sample_types: vec![
            ValueType {
                r#type: "samples".into(),
                unit: "count".into(),
            },
            ValueType {
                r#type: "cpu".into(),
                unit: "nanoseconds".into(),
            },
        ],
        period_type: ValueType {
            r#type: "cpu".into(),
            unit: "nanoseconds".into(),
        },
        period,
        time_nanos: started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: elapsed.as_nanos() as i64,
    };
    let profile = Symbolizer::new().build_profile(&capture.stacks, &capture.maps, &shape);
    let pprof = profiles::pprof::encode_gzip(&profile).context("encoding pprof")?;
    files::write_private(&args.output, &pprof)?;
    let cpu_index = 1;
    if let Some(svg_path) = &args.svg {
        let mut svg = Vec::new();
        match profiles::flamegraph::render_svg(&profile, cpu_index, "qprof: CPU", &mut svg) {
            Ok(()) => files::write_private(svg_path, &svg)?,
            Err(err) => eprintln!(
                "qprof: no flamegraph written to {}: {err}",
                svg_path.display()
            ),
        }
    }
    if let Some(folded_path) = &args.folded {
        let mut text = profiles::folded::folded_lines(&profile, 0).join("\n");
        text.push('\n');
        files::write_private(folded_path, text.as_bytes())?;
    }
    summarize(args, capture);
    Ok(())
}

fn summarize(args: &RecordCpuArgs, capture: &CpuCapture) {
    let counted = capture.stacks.total();
    eprintln!(
        "qprof: {} samples ({} distinct stacks) written to {}",
        counted,
        capture.stacks.len(),
        args.output.display()
    );
    if counted == 0 {
        eprintln!("qprof: no samples: the target did not run on a CPU during the capture");
    }
    if !capture.drops.is_empty() {
        let lost: Vec<String> = capture
            .drops
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        eprintln!(
            "qprof: of {} samples taken, some were degraded or lost: {}",
            capture.total_samples,
            lost.join(", ")
        );
    }
}
