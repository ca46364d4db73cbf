//! `qprof agent`: the always-on daemon.
//!
//! The same components `qprof record …` drives once are driven here for
//! ever, in windows ([`supervise`]); each window feeds the metrics, the
//! in-memory recent windows and the store ([`windows`]); on-demand captures
//! run beside them ([`captures`]); the HTTP server ([`crate::server`])
//! reads all of it through [`Shared`]. Triggers and the UI plug in as more
//! readers of `Shared` and more callers of [`captures::start`].

pub mod capture_kinds;
pub mod captures;
pub mod config;
pub mod metrics;
pub mod supervise;
pub mod triggers;
pub mod windows;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{captures::Captures, config::Config, windows::RecentWindows};
use crate::{
    aggregate::queries::QueryTable,
    export::{
        metrics::{Metrics, MetricsConfig},
        pyroscope::{Pusher, PyroscopeConfig},
        store::Store,
    },
};

/// Counters of the agent's own life, exported as metrics.
#[derive(Debug, Default)]
pub struct Health {
    pub windows_written: AtomicU64,
    pub window_write_errors: AtomicU64,
    pub captures_taken: AtomicU64,
    pub task_restarts: AtomicU64,
    pub corrupt_captures_skipped: AtomicU64,
}

/// The last complete window of the table-shaped capabilities.
#[derive(Debug, Default)]
pub struct Latest {
    pub syscalls: Vec<crate::aggregate::syscalls::SyscallRow>,
    pub tcp: Vec<crate::aggregate::tcp::TcpRow>,
}

/// What every task and handler of the agent shares.
pub struct Shared {
    config: RwLock<Config>,
    pub store: Store,
    /// Bearer token; `None`: no authentication (loopback only).
    pub token: Option<String>,
    pub health: Health,
    pub recent: Mutex<RecentWindows>,
    /// Statements seen since the agent started (bounded, least used
    /// evicted): what `/api/queries` and `qprof top` show.
    pub queries: Mutex<QueryTable>,
    /// The last window's syscall and TCP rows (`/api/syscalls`, `/api/tcp`).
    pub latest: Mutex<Latest>,
    pub captures: Captures,
    pub metrics: Metrics,
    /// Pushes each CPU window when `[pyroscope] url` is set.
    pub pyroscope: Option<Pusher>,
    /// Rules, their signals and the flight recorder.
    pub triggers: triggers::TriggerState,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shared {
    /// The current config (a copy: reloads replace it whole).
    pub fn config(&self) -> Config {
        self.config
            .read()
            .map_or_else(|p| p.into_inner().clone(), |c| c.clone())
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.config().window
    }

    fn replace_config(&self, config: Config) {
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(p) => *p.into_inner() = config,
        }
    }
}

/// A `Shared` on a scratch data directory, for tests of the daemon's parts.
#[cfg(test)]
pub(crate) fn test_shared(dir: &std::path::Path, config: Config) -> Arc<Shared> {
    Arc::new(Shared {
        store: Store::open(dir).expect("scratch store"),
        token: None,
        health: Health::default(),
        recent: Mutex::new(RecentWindows::new(2)),
        queries: Mutex::new(QueryTable::default()),
        latest: Mutex::new(Latest::default()),
        captures: Captures::new(Vec::new()),
        metrics: Metrics::default(),
        pyroscope: None,
        triggers: triggers::TriggerState::new(&config),
        config: RwLock::new(config),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
    })
}

/// One line on stderr, prefixed (journald adds the time).
pub fn log(message: &str) {
    eprintln!("qprof agent: {message}");
}

/// What the command line adds to (or overrides in) the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
}

/// The effective config: file (or embedded defaults) then the overrides.
pub fn effective_config(o: &Overrides) -> anyhow::Result<Config> {
    let mut config = match &o.config_file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = o.listen {
        config.listen = listen;
    }
    if let Some(dir) = &o.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(file) = &o.auth_token_file {
        config.auth_token_file = Some(file.clone());
    }
    Ok(config)
}

/// Reads the token file: one line, at least 16 characters.
fn read_token(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.auth_token_file else {
        if !config.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without an auth token: set auth_token_file (or \
                 --auth-token-file) or listen on 127.0.0.1",
                config.listen
            );
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the auth token file {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 || token.contains(char::is_whitespace) {
        bail!(
            "auth token in {} must be one word of at least 16 characters",
            path.display()
        );
    }
    Ok(Some(token.to_owned()))
}

/// At most two glibc malloc arenas: every blocking thread (one per
/// capability, the symbolizer, the sampler) would otherwise get its own
/// 64 MB arena and keep its peak resident (measured: four fully resident
/// arenas in a 5-minute run). The agent allocates little on hot paths, so
/// the contention costs nothing measurable.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tunables; called before the
    // agent starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(overrides: &Overrides) -> anyhow::Result<()> {
    let config = effective_config(overrides)?;
    let token = read_token(&config)?;
    crate::probes::preflight::check_capabilities()?;
    crate::probes::preflight::check_btf()?;
    if crate::probes::preflight::ensure_tracefs()? {
        log("mounted tracefs at /sys/kernel/tracing");
    }
    let store = Store::open(&config.data_dir)
        .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, token, store, overrides.config_file.clone()))
}

async fn serve(
    config: Config,
    token: Option<String>,
    store: Store,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let pyroscope = match &config.pyroscope.url {
        Some(url) => Some(
            Pusher::start(PyroscopeConfig::new(url.clone()))
                .context("starting the Pyroscope push")?,
        ),
        None => None,
    };
    let (old, warnings) = store.captures();
    for w in &warnings {
        log(&format!("skipping capture directory: {w}"));
    }
    let shared = Arc::new(Shared {
        recent: Mutex::new(RecentWindows::new(config.store.memory_windows)),
        queries: Mutex::new(QueryTable::default()),
        latest: Mutex::new(Latest::default()),
        captures: Captures::new(old),
        metrics: Metrics::new(MetricsConfig {
            top_queries: config.metrics.top_fingerprints,
            top_syscalls: config.metrics.top_series,
            top_tcp: config.metrics.top_series,
            ..MetricsConfig::default()
        }),
        pyroscope,
        triggers: triggers::TriggerState::new(&config),
        config: RwLock::new(config.clone()),
        store,
        token,
        health: Health::default(),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    shared
        .health
        .corrupt_captures_skipped
        .store(warnings.len() as u64, Ordering::Relaxed);
    windows::start_continuous(&shared, &config);
    metrics::spawn_sampler(&shared);
    triggers::spawn(&shared);
    let server = crate::server::router(shared.clone());
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        let stopped = cancel.clone();
        if let Err(e) = axum::serve(listener, server)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
        {
            log(&format!("HTTP server failed: {e}"));
            cancel.cancel();
        }
    });
    log(&format!(
        "listening on http://{} (data in {})",
        config.listen,
        config.data_dir.display()
    ));
    signals(&shared, config_file.as_deref()).await;
    log("stopping: writing the current window and detaching");
    shared.tracker.close();
    shared.tracker.wait().await;
    log("stopped");
    Ok(())
}

/// Waits for SIGINT/SIGTERM (returns) and handles SIGHUP (reload).
async fn signals(shared: &Shared, config_file: Option<&std::path::Path>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        log("cannot install signal handlers; stop with kill -9 only");
        shared.cancel.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = shared.cancel.cancelled() => break,
            _ = hup.recv() => reload(shared, config_file),
        }
    }
    shared.cancel.cancel();
}

/// SIGHUP: a good file replaces the config (what needs a restart is named);
/// a bad one keeps the old config and says why.
fn reload(shared: &Shared, config_file: Option<&std::path::Path>) {
    let Some(path) = config_file else {
        log("SIGHUP: no config file to reload (running on embedded defaults)");
        return;
    };
    match Config::load(path) {
        Err(e) => log(&format!("SIGHUP: keeping the old config: {e}")),
        Ok(mut new) => {
            let old = shared.config();
            let mut restart = Vec::new();
            if new.listen != old.listen {
                restart.push("listen");
            }
            if new.data_dir != old.data_dir {
                restart.push("data_dir");
            }
            if new.continuous != old.continuous {
                restart.push("continuous");
            }
            if new.auth_token_file != old.auth_token_file {
                restart.push("auth_token_file");
            }
            if new.pyroscope != old.pyroscope {
                restart.push("pyroscope");
            }
            if new.rules != old.rules || new.triggers != old.triggers {
                restart.push("rules and triggers");
            }
            // What only a restart applies keeps its running value, so that
            // the config the agent reports is the one it runs on.
            new.listen = old.listen;
            new.data_dir = old.data_dir;
            new.continuous = old.continuous;
            new.auth_token_file = old.auth_token_file;
            new.pyroscope = old.pyroscope;
            new.rules = old.rules;
            new.triggers = old.triggers;
            shared.replace_config(new);
            if restart.is_empty() {
                log(&format!("SIGHUP: reloaded {}", path.display()));
            } else {
                log(&format!(
                    "SIGHUP: reloaded {}; changes to {} apply at the next restart",
                    path.display(),
                    restart.join(", ")
                ));
            }
        }
    }
}
