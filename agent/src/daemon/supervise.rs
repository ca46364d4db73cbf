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
    spawn_sliced::<C, F>(tracker, shared, cancel, config, None, sink);
}

/// As [`spawn`], but snapshots every `slice` (when set) instead of every
/// window: what triggers and the flight recorder need (seconds, not a
/// minute); the sink assembles its windows from the slices.
pub fn spawn_sliced<C, F>(
    tracker: &TaskTracker,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    config: C::Config,
    slice: Option<Duration>,
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
                    drive::<C>(&shared2, &cancel2, &config2, slice, &*sink2)
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
    slice: Option<Duration>,
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
    let every = || slice.unwrap_or_else(|| shared.window());
    let mut next = Instant::now() + every();
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
            next += every();
            if next < Instant::now() {
                // The sink took longer than a window: skip ahead rather than
                // emit a burst of empty windows.
                next = Instant::now() + every();
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
pub fn release_freed_memory() {
    // SAFETY: malloc_trim has no preconditions; it only returns free pages
    // of the malloc arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{daemon::config::Config, probes::component::CaptureKind};

    static STARTS: AtomicUsize = AtomicUsize::new(0);
    static WINDOWS: AtomicUsize = AtomicUsize::new(0);

    /// A component whose first life panics at its first snapshot.
    struct Flaky {
        life: usize,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Component for Flaky {
        type Config = ();
        type Snapshot = usize;
        type Error = Never;
        const KIND: CaptureKind = CaptureKind::Syscalls;

        fn start((): &()) -> Result<Self, Never> {
            Ok(Self {
                life: STARTS.fetch_add(1, Ordering::SeqCst) + 1,
            })
        }
        fn poll(&mut self) {}
        fn progress(&self) -> u64 {
            0
        }
        fn snapshot(&mut self) -> Result<usize, Never> {
            assert!(self.life > 1, "first life panics on purpose");
            Ok(self.life)
        }
        fn stop(self) -> Result<usize, Never> {
            Ok(self.life)
        }
    }

    /// A component that panics is logged, counted and started again; its next life delivers windows, and cancelling stops it.
    #[test]
    fn panicking_component_is_restarted() {
        let dir = std::env::temp_dir().join(format!("qprof-supervise-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            window: Duration::from_secs(1),
            ..Config::default()
        };
        let shared = crate::daemon::test_shared(&dir, config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            spawn::<Flaky, _>(
                &shared.tracker,
                shared.clone(),
                shared.cancel.clone(),
                (),
                |_, life, _| {
                    assert_eq!(life, 2);
                    WINDOWS.fetch_add(1, Ordering::SeqCst);
                },
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while WINDOWS.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < deadline, "no window after the restart");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shared.cancel.cancel();
            shared.tracker.close();
            shared.tracker.wait().await;
        });
        assert_eq!(STARTS.load(Ordering::SeqCst), 2);
        assert_eq!(
            shared
                .health
                .task_restarts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
