//! On-demand captures: one component started beside the continuous ones
//! for a fixed time, its results written to `captures/<id>/` with a
//! `meta.json`. At most one capture of a kind runs at a time (a second gets
//! the running one's id); triggers will call [`start`] with their reason.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use super::{Shared, log};
use crate::{
    export::store::{CaptureMeta, CaptureStatus, unix_ms},
    probes::component::{CaptureKind, Component, POLL_EVERY},
};

/// What a client asks for (`POST /api/captures`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub kind: String,
    pub duration_s: f64,
    #[serde(default)]
    pub pids: Vec<u32>,
    #[serde(default)]
    pub hz: Option<u64>,
}

/// Why a capture cannot start; the HTTP layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a {kind} capture is already running: {id}")]
    Busy { kind: CaptureKind, id: String },
    #[error("the capture could not be recorded: {0}")]
    Store(String),
}

/// Captures known to this agent (from the store at start-up, and started
/// since), by id. Bounded by the store itself: finished captures are only
/// their `meta.json`, a few hundred bytes each.
pub struct Captures {
    metas: Mutex<BTreeMap<String, CaptureMeta>>,
    running: Mutex<BTreeMap<CaptureKind, String>>,
}

impl Captures {
    #[must_use]
    pub fn new(old: Vec<CaptureMeta>) -> Self {
        let metas = old
            .into_iter()
            .map(|mut m| {
                if m.status == CaptureStatus::Running {
                    // The agent that ran it is gone.
                    m.status = CaptureStatus::Failed;
                    m.error = Some("the agent stopped before the capture ended".into());
                }
                (m.id.clone(), m)
            })
            .collect();
        let mut metas = metas;
        forget_oldest(&mut metas, MAX_LISTED);
        Self {
            metas: Mutex::new(metas),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<CaptureMeta> {
        let mut all: Vec<CaptureMeta> = self
            .metas
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (b.started_unix_ms, &b.id).cmp(&(a.started_unix_ms, &a.id)));
        all
    }

    pub fn get(&self, id: &str) -> Option<CaptureMeta> {
        self.metas.lock().ok()?.get(id).cloned()
    }

    fn put(&self, meta: CaptureMeta) {
        if let Ok(mut m) = self.metas.lock() {
            m.insert(meta.id.clone(), meta);
            forget_oldest(&mut m, MAX_LISTED);
        }
    }
}

/// Captures the agent lists (and serves by id): the newest 1,000, a few
/// hundred bytes of meta each. Older ones stay on disk, where a restart
/// or a person finds them; the store has no retention for captures (they
/// were asked for).
const MAX_LISTED: usize = 1000;

/// Drops the oldest finished metas past `max` (ids start with their start
/// time in ms, so the map's order is their age); running ones are kept.
fn forget_oldest(metas: &mut BTreeMap<String, CaptureMeta>, max: usize) {
    while metas.len() > max {
        let oldest = metas
            .iter()
            .filter(|(_, m)| m.status != CaptureStatus::Running)
            .min_by_key(|(_, m)| m.started_unix_ms)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => {
                metas.remove(&id);
            }
            None => return,
        }
    }
}

/// Checks a request against the config; returns the kind and duration.
fn validate(shared: &Shared, req: &CaptureRequest) -> Result<(CaptureKind, Duration), StartError> {
    let bad = |m: String| StartError::BadRequest(m);
    let kind: CaptureKind = req
        .kind
        .parse()
        .map_err(|e: crate::probes::component::UnknownKind| bad(e.to_string()))?;
    let max = shared.config().captures.max_duration;
    if !req.duration_s.is_finite() || req.duration_s < 0.1 {
        return Err(bad(format!(
            "duration_s must be at least 0.1, got {}",
            req.duration_s
        )));
    }
    if req.duration_s > max.as_secs_f64() {
        return Err(bad(format!(
            "duration_s {} is over the maximum of {}s (captures.max_duration)",
            req.duration_s,
            max.as_secs()
        )));
    }
    if req.pids.len() > 64 {
        return Err(bad("at most 64 pids".into()));
    }
    for &pid in &req.pids {
        if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(bad(format!("no process with pid {pid}")));
        }
    }
    if kind == CaptureKind::Memory && req.pids.is_empty() {
        return Err(bad("a memory capture needs pids".into()));
    }
    if let Some(hz) = req.hz
        && (hz == 0 || hz > 1000 || kind != CaptureKind::Cpu)
    {
        return Err(bad("hz is for cpu captures only, between 1 and 1000".into()));
    }
    Ok((kind, Duration::from_secs_f64(req.duration_s)))
}

/// Starts a capture; returns its meta (status running).
pub fn start(
    shared: &Arc<Shared>,
    req: &CaptureRequest,
    reason: &str,
) -> Result<CaptureMeta, StartError> {
    let (kind, duration) = validate(shared, req)?;
    let started = SystemTime::now();
    let id = format!("{}-{}", unix_ms(started), kind);
    {
        let mut running = shared
            .captures
            .running
            .lock()
            .map_err(|_| StartError::Store("capture table poisoned".into()))?;
        if let Some(id) = running.get(&kind) {
            return Err(StartError::Busy {
                kind,
                id: id.clone(),
            });
        }
        running.insert(kind, id.clone());
    }
    let meta = CaptureMeta {
        id: id.clone(),
        kind: kind.to_string(),
        status: CaptureStatus::Running,
        reason: reason.to_owned(),
        started_unix_ms: unix_ms(started),
        duration_s: req.duration_s,
        elapsed_s: 0.0,
        pids: req.pids.clone(),
        hz: req.hz,
        files: Vec::new(),
        counts: Vec::new(),
        drops: Vec::new(),
        error: None,
    };
    if let Err(e) = shared.store.write_meta(&meta) {
        finish_running(shared, kind);
        return Err(StartError::Store(e.to_string()));
    }
    shared.captures.put(meta.clone());
    let s = shared.clone();
    let req = req.clone();
    let first = meta.clone();
    shared.tracker.spawn_blocking(move || {
        let mut meta = first;
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::capture_kinds::run(&s, kind, &req, duration, &mut meta)
        }));
        meta.elapsed_s = began.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => meta.status = CaptureStatus::Done,
            Ok(Err(e)) => {
                meta.status = CaptureStatus::Failed;
                meta.error = Some(format!("{e:#}"));
            }
            Err(_) => {
                meta.status = CaptureStatus::Failed;
                meta.error = Some("the capture panicked".into());
            }
        }
        if let Err(e) = s.store.write_meta(&meta) {
            log(&format!("capture {}: writing meta.json: {e}", meta.id));
        }
        log(&format!("capture {} {:?}", meta.id, meta.status));
        s.health.captures_taken.fetch_add(1, Ordering::Relaxed);
        s.metrics.capture_taken(kind.as_str());
        s.captures.put(meta);
        finish_running(&s, kind);
    });
    Ok(meta)
}

/// Lists files written beside a finished capture's own (a trigger's
/// bundle) in its meta, on disk and in memory.
pub fn add_files(shared: &Shared, id: &str, names: &[String]) {
    let Some(mut meta) = shared.captures.get(id) else {
        return;
    };
    for n in names {
        if !meta.files.contains(n) {
            meta.files.push(n.clone());
        }
    }
    if let Err(e) = shared.store.write_meta(&meta) {
        log(&format!("capture {id}: writing meta.json: {e}"));
    }
    shared.captures.put(meta);
}

fn finish_running(shared: &Shared, kind: CaptureKind) {
    if let Ok(mut r) = shared.captures.running.lock() {
        r.remove(&kind);
    }
}

/// Runs `C` for `duration` or until the agent stops; returns its capture.
pub fn record<C: Component>(
    shared: &Shared,
    config: &C::Config,
    duration: Duration,
) -> anyhow::Result<C::Snapshot> {
    let mut component = C::start(config)?;
    let end = Instant::now() + duration;
    while Instant::now() < end && !shared.cancel.is_cancelled() {
        component.poll();
        std::thread::sleep(POLL_EVERY.min(end.saturating_duration_since(Instant::now())));
    }
    Ok(component.stop()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, started: u64, status: CaptureStatus) -> CaptureMeta {
        CaptureMeta {
            id: id.into(),
            kind: "cpu".into(),
            status,
            reason: "on-demand".into(),
            started_unix_ms: started,
            duration_s: 1.0,
            elapsed_s: 0.0,
            pids: vec![],
            hz: None,
            files: vec![],
            counts: vec![],
            drops: vec![],
            error: None,
        }
    }

    /// The listed captures are bounded: the oldest finished ones go first, a running one stays.
    #[test]
    fn listing_is_bounded_oldest_first() {
        let old: Vec<CaptureMeta> = (0..5)
            .map(|i| meta(&format!("{i}-cpu"), i, CaptureStatus::Done))
            .collect();
        let mut map: BTreeMap<String, CaptureMeta> =
            old.into_iter().map(|m| (m.id.clone(), m)).collect();
        map.insert("0-tcp".into(), meta("0-tcp", 0, CaptureStatus::Running));
        forget_oldest(&mut map, 3);
        let ids: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(ids, ["0-tcp", "3-cpu", "4-cpu"]);
    }

    /// A capture left running by a previous agent is listed as failed, with why.
    #[test]
    fn running_captures_of_a_dead_agent_are_failed() {
        let c = Captures::new(vec![meta("1-cpu", 1, CaptureStatus::Running)]);
        let m = c.get("1-cpu").unwrap();
        assert_eq!(m.status, CaptureStatus::Failed);
        assert!(m.error.unwrap().contains("stopped"));
    }
}
