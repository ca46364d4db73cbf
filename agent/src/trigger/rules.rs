//! Trigger rules as the agent's TOML writes them (`[[rules]]` tables), and
//! their checks.
//!
//! A rule names a signal, a threshold in the signal's unit, how long the
//! breach must hold (`for`), a scope, an action (which deeper captures, for
//! how long) and a cooldown. Errors name the rule, the key and the line:
//! the keys whose value depends on another (a threshold's unit depends on
//! the signal) are kept with their span (`toml::Spanned`) so the check
//! after parsing can still point at the line.

use std::{fmt, ops::Range, time::Duration};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::probes::component::CaptureKind;

/// The rules the agent runs with when its config has no `[[rules]]`:
/// conservative, so a healthy host never fires them. Kept as TOML so the
/// README shows exactly this text.
pub const DEFAULT_RULES: &str = r#"
[[rules]]
name = "slow-query"
signal = "query_latency"
quantile = 0.99
threshold = "500ms"
for = "10s"
cooldown = "10m"
action = { kinds = ["cpu", "offcpu"], duration = "30s", hz = 99 }

[[rules]]
name = "hot-process"
signal = "process_cpu"
threshold = "90%"
for = "30s"
cooldown = "10m"
action = { kinds = ["cpu"], duration = "30s", hz = 99 }

[[rules]]
name = "growing-process"
signal = "process_rss_growth"
threshold = "50MB/min"
for = "2m"
cooldown = "30m"
action = { kinds = ["memory"], duration = "60s" }
"#;

/// What a rule watches. Host CPU, query error rate, syscall errors and TCP
/// signals are not implemented yet: naming one is an error, not a rule
/// that silently never fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A latency quantile of one fingerprint's queries over the last
    /// seconds (see `eval::QUERY_SPAN`); threshold a duration.
    QueryLatency,
    /// One process's CPU use, in % of one CPU; threshold `90%`.
    ProcessCpu,
    /// How fast one process's resident memory grows; threshold `50MB/min`.
    ProcessRssGrowth,
}

impl Signal {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueryLatency => "query_latency",
            Self::ProcessCpu => "process_cpu",
            Self::ProcessRssGrowth => "process_rss_growth",
        }
    }

    /// The unit thresholds and observed values of this signal are in.
    #[must_use]
    pub fn unit(self) -> &'static str {
        match self {
            Self::QueryLatency => "ms",
            Self::ProcessCpu => "%",
            Self::ProcessRssGrowth => "MB/min",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which processes a triggered capture looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The processes the signal implicates: a fingerprint's client pids,
    /// the process over its threshold.
    #[default]
    Implicated,
    /// The whole host.
    Host,
}

/// What a firing rule captures.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub kinds: Spanned<Vec<String>>,
    #[serde(with = "crate::daemon::config::human_duration")]
    pub duration: Duration,
    /// CPU sampling rate of the deeper CPU capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hz: Option<u64>,
}

/// One `[[rules]]` table, as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Spanned<String>,
    pub signal: Signal,
    /// For `query_latency`: which quantile, in (0, 1); 0.99 if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<Spanned<f64>>,
    /// In the signal's unit: `500ms`, `90%`, `50MB/min`.
    pub threshold: Spanned<String>,
    #[serde(rename = "for", with = "crate::daemon::config::human_duration")]
    pub hold: Duration,
    #[serde(default)]
    pub scope: Scope,
    /// For process signals: only processes of this comm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Missing: an error naming the rule (a rule that only watches would
    /// be a metric, not a trigger).
    pub action: Option<Action>,
    /// Quiet time after a firing before the rule may fire again.
    #[serde(
        default = "default_cooldown",
        with = "crate::daemon::config::human_duration"
    )]
    pub cooldown: Duration,
}

fn default_cooldown() -> Duration {
    Duration::from_mins(10)
}

/// A checked rule, thresholds in their signal's unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub signal: Signal,
    pub quantile: f64,
    /// In [`Signal::unit`].
    pub threshold: f64,
    pub hold: Duration,
    pub scope: Scope,
    pub comm: Option<String>,
    pub kinds: Vec<CaptureKind>,
    pub duration: Duration,
    pub hz: Option<u64>,
    pub cooldown: Duration,
}

impl Rule {
    /// The rule in words, e.g. `p99 of a fingerprint > 500 ms for 10s`.
    #[must_use]
    pub fn describe(&self) -> String {
        let what = match self.signal {
            Signal::QueryLatency => format!("p{} of a fingerprint", self.quantile * 100.0),
            Signal::ProcessCpu => "a process's CPU".to_owned(),
            Signal::ProcessRssGrowth => "a process's RSS growth".to_owned(),
        };
        format!(
            "{}: {what} > {} {} for {}s, then {} for {}s (cooldown {}s)",
            self.name,
            self.threshold,
            self.signal.unit(),
            self.hold.as_secs_f64(),
            self.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            self.duration.as_secs_f64(),
            self.cooldown.as_secs()
        )
    }
}

/// A rule that cannot run: which, which key, where, why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("rule {rule:?}: {key}: {problem} (line {line})")]
pub struct RuleError {
    pub rule: String,
    pub key: &'static str,
    pub line: usize,
    pub problem: String,
}

/// The embedded defaults, checked.
#[must_use]
pub fn default_rules() -> Vec<RuleConfig> {
    #[derive(Deserialize)]
    struct File {
        rules: Vec<RuleConfig>,
    }
    // A test proves the embedded text parses; an empty list would only
    // mean no rules, never a crash.
    toml::from_str::<File>(DEFAULT_RULES).map_or_else(|_| Vec::new(), |f| f.rules)
}

/// Checks every rule of a config (`text` is the file, for line numbers).
pub fn check(rules: &[RuleConfig], text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut names = std::collections::HashSet::new();
    rules
        .iter()
        .map(|r| {
            let rule = check_one(r, text)?;
            if !names.insert(rule.name.clone()) {
                return Err(err(r, "name", r.name.span(), text, "used by two rules"));
            }
            Ok(rule)
        })
        .collect()
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    text.get(..span.start)
        .map_or(0, |t| t.matches('\n').count())
        + 1
}

fn err(
    r: &RuleConfig,
    key: &'static str,
    span: Range<usize>,
    text: &str,
    problem: &str,
) -> RuleError {
    RuleError {
        rule: r.name.get_ref().clone(),
        key,
        line: line_of(text, &span),
        problem: problem.to_owned(),
    }
}

fn check_one(r: &RuleConfig, text: &str) -> Result<Rule, RuleError> {
    let name = r.name.get_ref().trim();
    if name.is_empty() || name.len() > 64 {
        return Err(err(
            r,
            "name",
            r.name.span(),
            text,
            "must be 1 to 64 characters",
        ));
    }
    let quantile = match &r.quantile {
        Some(q) if r.signal != Signal::QueryLatency => {
            return Err(err(
                r,
                "quantile",
                q.span(),
                text,
                "is for query_latency only",
            ));
        }
        Some(q) => {
            let v = *q.get_ref();
            if !(v > 0.0 && v < 1.0) {
                return Err(err(
                    r,
                    "quantile",
                    q.span(),
                    text,
                    &format!("must be inside (0, 1), got {v}"),
                ));
            }
            v
        }
        None => 0.99,
    };
    let threshold = parse_threshold(r.signal, r.threshold.get_ref())
        .map_err(|p| err(r, "threshold", r.threshold.span(), text, &p))?;
    let name_span = r.name.span();
    let Some(action) = &r.action else {
        return Err(err(
            r,
            "action",
            name_span,
            text,
            "missing: say what to capture, e.g. action = { kinds = [\"cpu\"], duration = \"30s\" }",
        ));
    };
    let kinds = action
        .kinds
        .get_ref()
        .iter()
        .map(|k| k.parse::<CaptureKind>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(r, "action.kinds", action.kinds.span(), text, &e.to_string()))?;
    if kinds.is_empty() {
        return Err(err(
            r,
            "action.kinds",
            action.kinds.span(),
            text,
            "names no capture",
        ));
    }
    if let Some(hz) = action.hz
        && (hz == 0 || hz > 1000)
    {
        return Err(err(
            r,
            "action.hz",
            name_span,
            text,
            "must be between 1 and 1000",
        ));
    }
    Ok(Rule {
        name: name.to_owned(),
        signal: r.signal,
        quantile,
        threshold,
        hold: r.hold,
        scope: r.scope,
        comm: r.comm.clone(),
        kinds,
        duration: action.duration,
        hz: action.hz,
        cooldown: r.cooldown,
    })
}

/// A threshold in the signal's unit, as a number in [`Signal::unit`].
fn parse_threshold(signal: Signal, text: &str) -> Result<f64, String> {
    let t = text.trim();
    let number = |s: &str| -> Result<f64, String> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("'{text}' is not a positive number with a unit"))
    };
    match signal {
        Signal::QueryLatency => {
            let (n, scale) = if let Some(n) = t.strip_suffix("ms") {
                (n, 1.0)
            } else if let Some(n) = t.strip_suffix("us") {
                (n, 0.001)
            } else if let Some(n) = t.strip_suffix('s') {
                (n, 1000.0)
            } else {
                return Err(format!(
                    "'{text}' needs a duration unit for query_latency, e.g. 250ms or 1s"
                ));
            };
            Ok(number(n)? * scale)
        }
        Signal::ProcessCpu => {
            let n = t.strip_suffix('%').ok_or_else(|| {
                format!("'{text}' needs a % for process_cpu (of one CPU), e.g. 90%")
            })?;
            number(n)
        }
        Signal::ProcessRssGrowth => {
            let units = [
                ("GB/min", 1024.0),
                ("MB/min", 1.0),
                ("KB/min", 1.0 / 1024.0),
            ];
            let (n, scale) = units
                .iter()
                .find_map(|(u, s)| t.strip_suffix(u).map(|n| (n, *s)))
                .ok_or_else(|| {
                    format!("'{text}' needs a rate unit for process_rss_growth, e.g. 50MB/min")
                })?;
            Ok(number(n)? * scale)
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
