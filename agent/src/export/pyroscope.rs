//! Pushing profiles to a Pyroscope server's ingest API, in the background.
//!
//! The API (Grafana Pyroscope, "legacy HTTP API", still served by every
//! release and by Grafana Alloy's `pyroscope.receive_http`):
//! `POST /ingest?name=APP{label=value,...}&from=UNIX_S&until=UNIX_S&format=pprof`
//! with the pprof in a `multipart/form-data` body, field `profile` (the form
//! Pyroscope's own Go client sends; an optional `sample_type_config` field
//! describes sample types Pyroscope does not know). With `format=pprof`,
//! `name` is a prefix: Pyroscope appends the profile type (`qprof.cpu`).
//! Our CPU profiles carry Go's CPU sample types (`samples`/count,
//! `cpu`/nanoseconds), which Pyroscope maps by default.
//!
//! [`Pusher::push`] never blocks the caller (the probes' drain loop): it
//! appends to a bounded queue that drops its oldest entry when full, and a
//! tokio task sends. Failures back off exponentially (capped) and are
//! counted; nothing is retried for ever at the expense of newer windows.
//!
//! The client is hyper's (with hyper-util's pooled client): the agent's
//! HTTP server (axum) is built on hyper and tokio, so the push costs no
//! new dependency tree, unlike reqwest (the same stack plus its own
//! layers) or ureq (blocking, its own TLS stack). Plain `http://` only for
//! now: HTTPS would add hyper-rustls.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use profiles::{LabelValue, Profile, ProfileError};
use tokio::sync::Notify;

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct PyroscopeConfig {
    /// Base URL of the server, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// Application name prefix (Pyroscope shows `<app>.cpu`).
    pub app: String,
    /// Value of the `host` label.
    pub host: String,
    /// Profiles waiting to be sent; the oldest is dropped past this.
    pub queue_capacity: usize,
    /// One request's time limit (connect + send + response).
    pub timeout: Duration,
    /// First wait after a failure; doubles per consecutive failure.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
}

impl PyroscopeConfig {
    /// Defaults for `url`: app `qprof`, this host's name.
    ///
    /// The queue holds 256 profiles: 4 windows of up to [`MAX_PROCESSES`]
    /// processes each (~4 minutes of 60 s windows while a server is down),
    /// a few MB at most. Back-off from 1 s to 5 min: quick recovery from a
    /// restart, no hammering of a server that is down for long.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            app: "qprof".to_owned(),
            host: hostname(),
            queue_capacity: 256,
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_mins(5),
        }
    }
}

/// Most processes pushed per window: the busiest ones (by their first
/// sample value). Each is a Pyroscope series; 64 keeps a host's series
/// count and a window's upload (a few MB) bounded on a busy host.
pub const MAX_PROCESSES: usize = 64;

/// Errors building a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The configured URL does not parse or is not `http://`.
    #[error("invalid Pyroscope URL {url:?}: {reason}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A profile could not be encoded.
    #[error("encoding a profile for Pyroscope: {0}")]
    Encode(#[from] ProfileError),
}

/// One profile to push: gzip pprof plus its labels and time range.
#[derive(Debug, Clone)]
pub struct PushItem {
    /// Labels (`service_name`, `host`, `pid`, ...), sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Start of the profiled window, Unix seconds.
    pub from: u64,
    /// End of the profiled window, Unix seconds.
    pub until: u64,
    /// The profile, gzip-compressed pprof.
    pub pprof_gz: Vec<u8>,
}

/// Counters, exported by the agent as `qprof_pyroscope_*_total`.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Profiles the server accepted (2xx).
    pub pushed: AtomicU64,
    /// Failed attempts: transport errors, timeouts, 5xx and 429.
    pub failed: AtomicU64,
    /// Profiles the server refused (other 4xx); not retried.
    pub rejected: AtomicU64,
    /// Profiles dropped because the queue was full (oldest first).
    pub dropped_queue_full: AtomicU64,
    /// Processes left out of a window past [`MAX_PROCESSES`].
    pub dropped_processes: AtomicU64,
}

/// Queue shared by [`Pusher`] and its task.
#[derive(Debug, Default)]
struct Queue {
    /// Items with a sequence number, so the sender can tell whether the
    /// head it sent is still the head.
    items: Mutex<VecDeque<(u64, PushItem)>>,
    next_seq: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    wake: Notify,
}

/// Handle to the background sender; dropping it stops the task.
#[derive(Debug)]
pub struct Pusher {
    queue: Arc<Queue>,
    capacity: usize,
    stats: Arc<PushStats>,
    config: PyroscopeConfig,
}

impl Pusher {
    /// Checks the URL and spawns the sender on the current tokio runtime.
    pub fn start(config: PyroscopeConfig) -> Result<Self, PushError> {
        let base = ingest_base(&config.url)?;
        let queue = Arc::new(Queue::default());
        let stats = Arc::new(PushStats::default());
        let sender = Sender {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
            config: config.clone(),
            queue: Arc::clone(&queue),
            stats: Arc::clone(&stats),
        };
        tokio::spawn(sender.run());
        Ok(Self {
            queue,
            capacity: config.queue_capacity.max(1),
            stats,
            config,
        })
    }

    /// Queues `item`; never blocks. When the queue is full the oldest item
    /// is dropped (and counted): a newer window is worth more.
    pub fn push(&self, item: PushItem) {
        if let Ok(mut items) = self.queue.items.lock() {
            let seq = self.queue.next_seq.fetch_add(1, Ordering::Relaxed);
            items.push_back((seq, item));
            while items.len() > self.capacity {
                items.pop_front();
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.queue.wake.notify_one();
    }

    /// Splits a window's profile by process and queues each (at most
    /// [`MAX_PROCESSES`], the busiest).
    pub fn push_window(&self, profile: &Profile, from: u64, until: u64) -> Result<(), PushError> {
        let split = split_by_process(profile, MAX_PROCESSES);
        self.stats
            .dropped_processes
            .fetch_add(split.left_out as u64, Ordering::Relaxed);
        for process in split.processes {
            let labels = BTreeMap::from([
                ("service_name".to_owned(), process.comm),
                ("host".to_owned(), self.config.host.clone()),
                ("pid".to_owned(), process.pid.to_string()),
            ]);
            self.push(PushItem {
                labels,
                from,
                until,
                pprof_gz: profiles::pprof::encode_gzip(&process.profile)?,
            });
        }
        Ok(())
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &PushStats {
        &self.stats
    }

    /// Profiles waiting to be sent.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.items.lock().map_or(0, |items| items.len())
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Relaxed);
        self.queue.wake.notify_one();
    }
}

/// The background task: sends the queue's head, backs off on failure.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    config: PyroscopeConfig,
    queue: Arc<Queue>,
    stats: Arc<PushStats>,
}

/// What one attempt came to.
enum Outcome {
    Sent,
    Retry,
    Refused,
}

impl Sender {
    async fn run(self) {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        loop {
            if self.queue.closed.load(Ordering::Relaxed) {
                return;
            }
            let head = self
                .queue
                .items
                .lock()
                .ok()
                .and_then(|items| items.front().cloned());
            let Some((seq, item)) = head else {
                self.queue.wake.notified().await;
                continue;
            };
            let outcome = self.send(&item).await;
            if !matches!(outcome, Outcome::Retry) {
                // Pop it unless the queue already dropped it meanwhile.
                if let Ok(mut items) = self.queue.items.lock()
                    && items.front().is_some_and(|(s, _)| *s == seq)
                {
                    items.pop_front();
                }
            }
            match outcome {
                Outcome::Sent => {
                    self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                    backoff.reset();
                }
                Outcome::Refused => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Retry => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn send(&self, item: &PushItem) -> Outcome {
        let Ok(uri) = format!("{}{}", self.base, query(&self.config.app, item)).parse::<Uri>()
        else {
            return Outcome::Refused;
        };
        let boundary = boundary(&item.pprof_gz);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(
                header::USER_AGENT,
                concat!("qprof/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(multipart(&boundary, &item.pprof_gz))));
        let Ok(request) = request else {
            return Outcome::Refused;
        };
        let attempt = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            // Drain the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            Some(status)
        };
        match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(Some(status)) if status.is_success() => Outcome::Sent,
            Ok(Some(status))
                if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Refused
            }
            _ => Outcome::Retry,
        }
    }
}

/// Exponential back-off: `min`, `2*min`, ... capped at `max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `min`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The wait before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self
            .min
            .saturating_mul(1 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `http://host:port` + `/ingest`, checked once at start.
fn ingest_base(url: &str) -> Result<String, PushError> {
    let bad = |reason: &str| PushError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported yet; use http:// (e.g. through a local proxy)",
            ));
        }
        _ => return Err(bad("expected http://HOST:PORT")),
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(format!("{}/ingest", url.trim_end_matches('/')))
}

/// `?name=app{k=v,...}&from=..&until=..&format=pprof&spyName=qprof`,
/// percent-encoded.
fn query(app: &str, item: &PushItem) -> String {
    let labels: Vec<String> = item
        .labels
        .iter()
        .map(|(k, v)| format!("{}={}", label_text(k), label_text(v)))
        .collect();
    let name = format!("{}{{{}}}", label_text(app), labels.join(","));
    format!(
        "?name={}&from={}&until={}&format=pprof&spyName=qprof",
        percent_encode(&name),
        item.from,
        item.until.max(item.from + 1)
    )
}

/// Pyroscope's name syntax reserves `{}=,` (and quotes); a comm may hold
/// any byte but NUL, so those become `_`.
fn label_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if "{}=,\"'".contains(c) || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A multipart boundary that does not occur in `body` (a 128-bit
/// pseudo-random one almost never does; up to 64 are tried).
fn boundary(body: &[u8]) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let candidate = |i: u128| {
        format!(
            "qprof-{:032x}",
            seed.wrapping_add(i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    };
    (0u128..64)
        .map(candidate)
        .find(|b| !body.windows(b.len()).any(|w| w == b.as_bytes()))
        .unwrap_or_else(|| candidate(64))
}

/// The form: one file field `profile` holding the gzip pprof.
fn multipart(boundary: &str, pprof_gz: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(pprof_gz.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(pprof_gz);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// One process's share of a window.
#[derive(Debug)]
pub struct ProcessProfile {
    /// Its pid (the `pid` sample label).
    pub pid: i64,
    /// Its comm (the `comm` sample label).
    pub comm: String,
    /// Only its samples, same sample types and mappings.
    pub profile: Profile,
}

/// A window split by process.
#[derive(Debug)]
pub struct Split {
    /// The busiest processes, busiest first.
    pub processes: Vec<ProcessProfile>,
    /// Processes beyond the cap.
    pub left_out: usize,
}

/// Groups samples by their `pid` label (samples without one are left out:
/// they cannot be labelled), keeps the `max` busiest by first value.
#[must_use]
pub fn split_by_process(profile: &Profile, max: usize) -> Split {
    let mut groups: BTreeMap<i64, (String, i64, Vec<usize>)> = BTreeMap::new();
    for (i, sample) in profile.samples.iter().enumerate() {
        let mut pid = None;
        let mut comm = String::new();
        for label in &sample.labels {
            match (label.key.as_str(), &label.value) {
                ("pid", LabelValue::Num { value, .. }) => pid = Some(*value),
                ("comm", LabelValue::Str(s)) => comm.clone_from(s),
                _ => {}
            }
        }
        let Some(pid) = pid else { continue };
        let group = groups.entry(pid).or_insert_with(|| (comm, 0, Vec::new()));
        group.1 = group
            .1
            .saturating_add(sample.values.first().copied().unwrap_or(0));
        group.2.push(i);
    }
    let mut ranked: Vec<_> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
    let left_out = ranked.len().saturating_sub(max);
    ranked.truncate(max);
    let processes = ranked
        .into_iter()
        .map(|(pid, (comm, _, indices))| ProcessProfile {
            pid,
            comm,
            profile: Profile {
                samples: indices
                    .iter()
                    .map(|&i| profile.samples[i].clone())
                    .collect(),
                ..shape_of(profile)
            },
        })
        .collect();
    Split {
        processes,
        left_out,
    }
}

/// Everything but the samples.
fn shape_of(profile: &Profile) -> Profile {
    Profile {
        sample_types: profile.sample_types.clone(),
        default_sample_type: profile.default_sample_type.clone(),
        period_type: profile.period_type.clone(),
        period: profile.period,
        time_nanos: profile.time_nanos,
        duration_nanos: profile.duration_nanos,
        mappings: profile.mappings.clone(),
        samples: Vec::new(),
        comments: profile.comments.clone(),
    }
}

/// This host's name (the kernel's, as `hostname` prints it).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
#[path = "pyroscope_tests.rs"]
mod tests;
