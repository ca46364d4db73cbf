//! Triggers: rules over the live signals that start deeper captures of the
//! implicated processes when breached, and the flight recorder that keeps
//! what ran before the breach.
//!
//! Everything here is pure (time and observations come in as values);
//! the agent's glue (`daemon::triggers`) samples the signals, asks
//! [`eval::Evaluator`] what to do, starts the captures and writes the
//! bundle described by [`Bundle`].

pub mod eval;
pub mod recorder;
pub mod rules;
pub mod signals;

use serde::Serialize;

use self::eval::Observation;

/// `trigger.json`: why a triggered capture exists and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Bundle {
    pub rule: String,
    /// The rule in words.
    pub description: String,
    pub signal: &'static str,
    pub unit: &'static str,
    pub observed: f64,
    pub threshold: f64,
    /// For `query_latency`: the quantile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    pub breach_start_unix_ms: u64,
    pub fired_unix_ms: u64,
    /// When the first deeper capture started.
    pub capture_started_unix_ms: Option<u64>,
    pub scope: BundleScope,
    /// Capture ids started by this firing, and their kinds.
    pub captures: Vec<(String, String)>,
    /// Kinds that could not start, with why.
    pub not_started: Vec<(String, String)>,
    /// Samples of the flight recorder's pre-breach profile.
    pub prebreach_samples: u64,
    /// The flight recorder's memory when the rule fired.
    pub flight_recorder_bytes: u64,
    /// Filled in when the captures end: `duration reached`, `process
    /// exited`, `agent stopping`, or the failure.
    pub stopped: Option<String>,
}

/// The processes (and, for a query signal, the fingerprint) a firing is
/// about.
#[derive(Debug, Clone, Serialize)]
pub struct BundleScope {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl BundleScope {
    /// The scope of an observation of `signal`.
    #[must_use]
    pub fn of(signal: rules::Signal, o: &Observation, comms: Vec<String>) -> Self {
        let query = signal == rules::Signal::QueryLatency;
        Self {
            pids: o.pids.clone(),
            comms,
            fingerprint_id: query.then(|| o.subject.clone()),
            fingerprint: query.then(|| o.label.clone()),
        }
    }
}
