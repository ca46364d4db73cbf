//! The agent's side of triggers: feeds the one-second CPU and query slices
//! to the flight recorder and the query signal, samples `/proc` once a
//! second, asks the evaluator what to do, and for a firing starts the
//! deeper captures (`captures::start`, reason `trigger: <rule>`) and
//! writes the bundle: `trigger.json`, `prebreach-cpu.pb.gz` and, when
//! the deeper CPU capture ends, `diff.svg`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{
    Shared,
    captures::{self, CaptureRequest},
    log,
    supervise::WindowSpan,
};
use crate::{
    aggregate::queries::QueryTable,
    export::{
        profile::{self, value_type},
        store::{CaptureStatus, unix_ms},
    },
    probes::{component::CaptureKind, cpu::CpuCapture},
    symbolize::{ProfileShape, Symbolizer},
    trigger::{
        Bundle, BundleScope,
        eval::{Decision, Evaluator, Firing},
        recorder::FlightRecorder,
        rules::{Rule, Scope, Signal},
        signals::{ProcSampler, QuerySlices},
    },
};

/// How often the continuous CPU and query components are read, and rules
/// evaluated: a rule's `for` of a few seconds needs second-level data,
/// and a one-second read of the two costs ~1 ms of agent CPU.
pub const SLICE: Duration = Duration::from_secs(1);

/// What the trigger machinery keeps between ticks.
pub struct TriggerState {
    evaluator: Mutex<Evaluator>,
    queries: Mutex<QuerySlices>,
    recorder: Mutex<FlightRecorder>,
    procs: Mutex<ProcSampler>,
    enabled: bool,
}

impl TriggerState {
    /// From the config's rules (already checked when the config loaded).
    #[must_use]
    pub fn new(config: &super::config::Config) -> Self {
        let rules = crate::trigger::rules::check(&config.rules, "").unwrap_or_default();
        let enabled = !rules.is_empty();
        let t = &config.triggers;
        let period = 1_000_000_000 / config.continuous.cpu_hz.max(1) as i64;
        Self {
            evaluator: Mutex::new(Evaluator::new(rules, t.max_per_hour, t.max_concurrent)),
            queries: Mutex::new(QuerySlices::default()),
            recorder: Mutex::new(FlightRecorder::new(
                t.flight_recorder.as_millis() as u64,
                period,
            )),
            procs: Mutex::new(ProcSampler::default()),
            enabled,
        }
    }

    /// The rules and their states (`qprof rules`, tests).
    pub fn rules(&self) -> Vec<(Rule, &'static str)> {
        let now = unix_ms(SystemTime::now());
        let Ok(e) = self.evaluator.lock() else {
            return Vec::new();
        };
        let states = e.states(now);
        e.rules()
            .cloned()
            .zip(states.into_iter().map(|(_, s)| s.as_str()))
            .collect()
    }
}

/// One CPU slice into the flight recorder (symbolized now, while its
/// processes live).
pub fn record_cpu_slice(
    shared: &Shared,
    symbolizer: &mut Symbolizer,
    slice: &CpuCapture,
    span: WindowSpan,
    hz: u64,
) {
    if !shared.triggers.enabled {
        return;
    }
    let shape = ProfileShape {
        sample_types: vec![
            value_type("samples", "count"),
            value_type("cpu", "nanoseconds"),
        ],
        period_type: value_type("cpu", "nanoseconds"),
        period: 1_000_000_000 / hz.max(1) as i64,
        time_nanos: span.start_ms as i64 * 1_000_000,
        duration_nanos: span.end_ms.saturating_sub(span.start_ms) as i64 * 1_000_000,
    };
    let p = profile::build(symbolizer, &slice.stacks, &slice.maps, &shape);
    if let Ok(mut r) = shared.triggers.recorder.lock() {
        let dropped = r.dropped;
        r.push(span.start_ms, span.end_ms, &p);
        shared
            .metrics
            .add_lost([("flight_recorder_full", r.dropped - dropped)]);
        shared
            .metrics
            .set_map_fill("FLIGHT_RECORDER_BYTES", r.bytes() as u64, 8 << 20);
    }
}

/// One query slice into the query signal.
pub fn record_query_slice(shared: &Shared, table: QueryTable) {
    if !shared.triggers.enabled {
        return;
    }
    if let Ok(mut q) = shared.triggers.queries.lock() {
        q.push(table);
    }
}

/// Evaluates the rules every [`SLICE`] until the agent stops.
pub fn spawn(shared: &Arc<Shared>) {
    if !shared.triggers.enabled {
        return;
    }
    let s = shared.clone();
    shared.tracker.spawn_blocking(move || {
        let mut ticks = 0u64;
        while !s.cancel.is_cancelled() {
            std::thread::sleep(SLICE);
            tick(&s);
            ticks += 1;
            if ticks.is_multiple_of(60)
                && let Ok(r) = s.triggers.recorder.lock()
            {
                log(&format!(
                    "flight recorder: {} samples in {} bytes",
                    r.samples(),
                    r.bytes()
                ));
            }
        }
    });
}

fn tick(shared: &Arc<Shared>) {
    let now = unix_ms(SystemTime::now());
    let t = &shared.triggers;
    let mut decisions = Vec::new();
    let Ok(mut eval) = t.evaluator.lock() else {
        return;
    };
    for q in eval.quantiles() {
        let obs = t.queries.lock().map(|s| s.quantiles(q)).unwrap_or_default();
        decisions.extend(eval.observe(now, Signal::QueryLatency, Some(q), &obs));
    }
    if (eval.watches(Signal::ProcessCpu) || eval.watches(Signal::ProcessRssGrowth))
        && let Ok(mut procs) = t.procs.lock()
    {
        let reading = procs.sample(now, std::process::id());
        decisions.extend(eval.observe(now, Signal::ProcessCpu, None, &reading.cpu));
        decisions.extend(eval.observe(now, Signal::ProcessRssGrowth, None, &reading.rss_growth));
    }
    drop(eval);
    for d in decisions {
        match d {
            Decision::Fire(f) => fire(shared, &f),
            Decision::Suppressed {
                rule,
                reason,
                observation,
            } => {
                shared.metrics.add_lost([(
                    format!("trigger_suppressed_{}", reason.as_str()).as_str(),
                    1,
                )]);
                log(&format!(
                    "trigger {rule}: suppressed ({}) for {} {} = {:.1}",
                    reason.as_str(),
                    observation.label,
                    observation.subject,
                    observation.value
                ));
            }
        }
    }
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// Starts the firing's captures and writes the first bundle.
fn fire(shared: &Arc<Shared>, f: &Firing) {
    let rule = &f.rule;
    let pids: Vec<u32> = match rule.scope {
        Scope::Host => Vec::new(),
        Scope::Implicated => (f.observation.pids.iter().copied())
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .take(64)
            .collect(),
    };
    let comms = pids.iter().map(|&p| comm_of(p)).collect();
    let (prebreach, recorder_bytes) = shared.triggers.recorder.lock().map_or((None, 0), |r| {
        (
            Some(r.profile(&pids, f.breach_start_ms + 999)),
            r.bytes() as u64,
        )
    });
    let mut bundle = Bundle {
        rule: rule.name.clone(),
        description: rule.describe(),
        signal: rule.signal.as_str(),
        unit: rule.signal.unit(),
        observed: f.observation.value,
        threshold: rule.threshold,
        quantile: (rule.signal == Signal::QueryLatency).then_some(rule.quantile),
        breach_start_unix_ms: f.breach_start_ms,
        fired_unix_ms: f.fire_ms,
        capture_started_unix_ms: None,
        scope: BundleScope::of(rule.signal, &f.observation, comms),
        captures: Vec::new(),
        not_started: Vec::new(),
        prebreach_samples: prebreach.as_ref().map_or(0, |p| p.total(0).max(0) as u64),
        flight_recorder_bytes: recorder_bytes,
        stopped: None,
    };
    let reason = format!("trigger: {}", rule.name);
    for kind in &rule.kinds {
        let req = CaptureRequest {
            kind: kind.to_string(),
            duration_s: rule.duration.as_secs_f64(),
            pids: pids.clone(),
            hz: (*kind == CaptureKind::Cpu).then_some(rule.hz).flatten(),
        };
        match captures::start(shared, &req, &reason) {
            Ok(meta) => {
                bundle
                    .capture_started_unix_ms
                    .get_or_insert(meta.started_unix_ms);
                bundle.captures.push((meta.id, kind.to_string()));
            }
            Err(e) => bundle.not_started.push((kind.to_string(), e.to_string())),
        }
    }
    log(&format!(
        "trigger {}: {} = {:.1} {} > {} since {} ms, fired {} ms after the rule's `for`; captures {:?} started {} ms after firing{}",
        rule.name,
        f.observation.label,
        f.observation.value,
        rule.signal.unit(),
        rule.threshold,
        f.fire_ms - f.breach_start_ms,
        (f.fire_ms - f.breach_start_ms).saturating_sub(rule.hold.as_millis() as u64),
        bundle.captures,
        bundle
            .capture_started_unix_ms
            .map_or(0, |s| s.saturating_sub(f.fire_ms)),
        if bundle.not_started.is_empty() {
            String::new()
        } else {
            format!("; not started: {:?}", bundle.not_started)
        }
    ));
    if bundle.captures.is_empty() {
        if let Ok(mut e) = shared.triggers.evaluator.lock() {
            e.finished(&rule.name);
        }
        return;
    }
    let pre = prebreach.and_then(|p| profile::pprof_gzip(&p).ok().map(|b| (p, b)));
    for (id, _) in &bundle.captures {
        if let Some((_, bytes)) = &pre {
            let _ = shared
                .store
                .write_capture_file(id, "prebreach-cpu.pb.gz", bytes);
        }
        write_bundle(shared, id, &bundle);
    }
    let s = shared.clone();
    let pre = pre.map(|(p, _)| p);
    shared
        .tracker
        .spawn_blocking(move || finish(&s, bundle, pre.as_ref()));
}

fn write_bundle(shared: &Shared, id: &str, bundle: &Bundle) {
    match serde_json::to_vec_pretty(bundle) {
        Ok(json) => {
            if let Err(e) = shared.store.write_capture_file(id, "trigger.json", &json) {
                log(&format!("capture {id}: writing trigger.json: {e}"));
            }
        }
        Err(e) => log(&format!("capture {id}: trigger.json: {e}")),
    }
}

/// Waits for the firing's captures to end; records why they stopped,
/// renders the differential flame graph and frees the rule.
fn finish(shared: &Arc<Shared>, mut bundle: Bundle, pre: Option<&profiles::Profile>) {
    let metas = loop {
        let metas: Vec<_> = (bundle.captures.iter())
            .filter_map(|(id, _)| shared.captures.get(id))
            .collect();
        if metas.iter().all(|m| m.status != CaptureStatus::Running) {
            break metas;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let failed: Vec<String> = (metas.iter())
        .filter_map(|m| m.error.as_ref().map(|e| format!("{}: {e}", m.id)))
        .collect();
    let alive =
        (bundle.scope.pids.iter()).any(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    bundle.stopped = Some(if !failed.is_empty() {
        failed.join("; ")
    } else if shared.cancel.is_cancelled() {
        "agent stopping".to_owned()
    } else if !bundle.scope.pids.is_empty() && !alive {
        "process exited".to_owned()
    } else {
        "duration reached".to_owned()
    });
    let mut extra = vec!["trigger.json".to_owned()];
    if pre.is_some() {
        extra.push("prebreach-cpu.pb.gz".to_owned());
    }
    for (id, kind) in &bundle.captures {
        write_bundle(shared, id, &bundle);
        let mut files = extra.clone();
        if kind == "cpu"
            && let Some(pre) = pre
            && diff_svg(shared, id, pre, &bundle.rule)
        {
            files.push("diff.svg".to_owned());
        }
        captures::add_files(shared, id, &files);
    }
    if let Ok(mut e) = shared.triggers.evaluator.lock() {
        e.finished(&bundle.rule);
    }
}

/// `diff.svg`: the deeper CPU profile against the pre-breach one.
fn diff_svg(shared: &Shared, id: &str, pre: &profiles::Profile, rule: &str) -> bool {
    let Some(deeper) = shared
        .store
        .read_capture_file(id, "cpu.pb.gz")
        .and_then(|b| profiles::decode(&b).ok())
    else {
        return false;
    };
    let (Some(a), Some(b)) = (
        pre.sample_type_index("cpu"),
        deeper.sample_type_index("cpu"),
    ) else {
        return false;
    };
    // Both profiles share their layout (samples, cpu).
    let index = a.min(b);
    let mut svg = Vec::new();
    let title = format!(
        "qprof: trigger {rule}: deeper CPU vs the flight recorder's pre-breach (red: more)"
    );
    match profiles::flamegraph::render_diff_svg(pre, &deeper, index, &title, &mut svg) {
        Ok(()) => shared
            .store
            .write_capture_file(id, "diff.svg", &svg)
            .is_ok(),
        Err(e) => {
            log(&format!("capture {id}: diff.svg: {e}"));
            false
        }
    }
}
