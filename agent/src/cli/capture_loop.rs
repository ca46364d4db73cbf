//! The wait shared by every `record` command: until the duration is up or
//! Ctrl-C/SIGTERM arrives, polling the probes and showing progress.

use std::time::{Duration, Instant};

use super::progress::Progress;
use crate::probes::component::Component;
pub use crate::probes::component::POLL_EVERY;

/// How a capture ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub elapsed: Duration,
}

/// Waits up to `duration`, calling `poll` every [`POLL_EVERY`]; `poll`
/// returns the count shown as progress (`unit`, e.g. "samples").
pub fn wait(
    duration: Duration,
    unit: &str,
    mut poll: impl FnMut() -> u64,
) -> anyhow::Result<Ended> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async {
        let start = Instant::now();
        // Probes are attached by now; tests (and people) wait for this line.
        eprintln!(
            "qprof: recording for {:.1}s (Ctrl-C to stop early)",
            duration.as_secs_f64()
        );
        let deadline = start + duration;
        let progress = Progress::new();
        let mut stop = std::pin::pin!(shutdown_signal());
        let mut tick = tokio::time::interval(POLL_EVERY);
        let mut interrupted = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stop => { interrupted = true; break; }
            }
            let count = poll();
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            progress.update(deadline - now, count, unit);
        }
        progress.finish();
        let elapsed = start.elapsed();
        if interrupted {
            eprintln!(
                "qprof: interrupted after {:.1}s; reporting what was collected",
                elapsed.as_secs_f64()
            );
        }
        Ended { elapsed }
    }))
}

/// Drives one component for `duration` (or until Ctrl-C/SIGTERM): polls it,
/// shows its progress in `unit`, then stops it, which reads the capture at
/// the instant it ends. The one driver of every `qprof record …`.
pub fn record<C: Component>(
    mut component: C,
    duration: Duration,
    unit: &str,
) -> anyhow::Result<(C::Snapshot, Ended)> {
    let ended = wait(duration, unit, || {
        component.poll();
        component.progress()
    })?;
    let snapshot = component
        .stop()
        .map_err(|e| anyhow::Error::new(e).context("reading the capture out of the kernel"))?;
    Ok((snapshot, ended))
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
