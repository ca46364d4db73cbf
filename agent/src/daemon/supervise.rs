//! Running a component for ever in windows, on its own blocking thread,
//! restarted when it panics or fails, stopped by the cancellation token.
//!
//! Component calls are synchronous BPF syscalls and `/proc` reads, so each
//! capability gets a blocking task (tokio's blocking pool): a slow poll of
//! one never delays another, and the async tasks (HTTP, window writing)
//! never block on the kernel.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Shared, log};
use crate::probes::component::{Component, POLL_EVERY};

/// Wait before restarting a component that failed: long enough that a
/// persistent failure (a kernel without a tracepoint) does not spin,
/// short enough that a transient one costs only a window.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// One window of one capability: where it starts and ends.
#[derive(Debug, Clone, Copy)]
pub struct WindowSpan {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Runs `C` for ever: start, poll every [`POLL_EVERY`], snapshot at each
/// window boundary and hand it to `sink`; stop (with a last snapshot, also
/// handed to `sink`) when `cancel` fires. A panic or an error is logged and
/// the component is started again after [`RESTART_AFTER`].
pub fn spawn<C, F>(
    tracker: &TaskTracker,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    config: C::Config,
    sink: F,
) where
    C: Component + 'static,
    C::Config: Send + Sync + 'static,
    F: Fn(&Shared, C::Snapshot, WindowSpan) + Send + Sync + 'static,
{
    let sink = Arc::new(sink);
    let config = Arc::new(config);
    let inner = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (shared2, cancel2, config2, sink2) =
                (shared.clone(), cancel.clone(), config.clone(), sink.clone());
            let run = inner.spawn_blocking(move || {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    drive::<C>(&shared2, &cancel2, &config2, &*sink2)
                }))
            });
            let outcome = run.await;
            let why = match outcome {
                Ok(Ok(Ok(()))) => return,
                Ok(Ok(Err(e))) => format!("failed: {e:#}"),
                Ok(Err(_)) | Err(_) => "panicked".to_owned(),
            };
            shared
                .health
                .task_restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log(&format!(
                "{} {why}; restarting in {}s",
                C::KIND,
                RESTART_AFTER.as_secs()
            ));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(RESTART_AFTER) => {}
            }
        }
    });
}

/// One life of a component, until cancelled (Ok) or failed (Err).
fn drive<C: Component>(
    shared: &Shared,
    cancel: &CancellationToken,
    config: &C::Config,
    sink: &dyn Fn(&Shared, C::Snapshot, WindowSpan),
) -> anyhow::Result<()> {
    let mut component = C::start(config)?;
    release_freed_memory();
    let window = shared.window();
    log(&format!(
        "{} is on (windows of {}s)",
        C::KIND,
        window.as_secs()
    ));
    let mut start_ms = crate::export::store::unix_ms(std::time::SystemTime::now());
    let mut next = Instant::now() + window;
    loop {
        if cancel.is_cancelled() {
            let end_ms = crate::export::store::unix_ms(std::time::SystemTime::now());
            let last = component.stop()?;
            sink(shared, last, WindowSpan { start_ms, end_ms });
            return Ok(());
        }
        component.poll();
        if Instant::now() >= next {
            let end_ms = crate::export::store::unix_ms(std::time::SystemTime::now());
            let snapshot = component.snapshot()?;
            sink(shared, snapshot, WindowSpan { start_ms, end_ms });
            start_ms = end_ms;
            next += shared.window();
            if next < Instant::now() {
                // The sink took longer than a window: skip ahead rather than
                // emit a burst of empty windows.
                next = Instant::now() + shared.window();
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Gives the memory freed after a start back to the system. Starting a
/// component parses the kernel's BTF and builds the object (tens of MB,
/// freed at once); each start runs on its own blocking thread, whose
/// glibc arena would otherwise keep that peak resident for ever (measured:
/// 43 MB of an idle agent's 69 MB RSS).
fn release_freed_memory() {
    // SAFETY: malloc_trim has no preconditions; it only returns free pages
    // of the malloc arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
