//! Rule evaluation: per rule and subject (a fingerprint, a process), when
//! the breach started; a rule fires when one subject has breached for the
//! rule's `for`, unless a guard (cooldown, hourly cap, concurrent cap)
//! suppresses it. Pure: time comes in as milliseconds, so tests drive it.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::rules::{Rule, Signal};

/// What one signal says about one subject at one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// The fingerprint id (hex) or the pid, as text: the key of a breach.
    pub subject: String,
    /// In the signal's unit.
    pub value: f64,
    /// Processes implicated (the fingerprint's clients; the process).
    pub pids: Vec<u32>,
    /// The fingerprint's normalized text, or the process's comm.
    pub label: String,
}

/// A rule's state, as `qprof_trigger_state` exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Pending,
    Firing,
    Cooling,
}

impl State {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Cooling => "cooling",
        }
    }
}

/// Why a rule that held its breach did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suppression {
    Cooldown,
    Cap,
    Concurrent,
}

impl Suppression {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cooldown => "cooldown",
            Self::Cap => "cap",
            Self::Concurrent => "concurrent",
        }
    }
}

/// A rule that fires now, with the evidence.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: Rule,
    pub observation: Observation,
    pub breach_start_ms: u64,
    pub fire_ms: u64,
}

/// What a tick decided.
#[derive(Debug, Clone)]
pub enum Decision {
    Fire(Firing),
    Suppressed {
        rule: String,
        reason: Suppression,
        observation: Observation,
    },
}

/// Breaching subjects tracked per rule: a breach is a few dozen bytes, and
/// more than 4,096 processes or fingerprints breaching one rule at once
/// means the threshold is wrong, not that each needs tracking (the rest
/// are ignored until some clear).
const MAX_PENDING: usize = 4096;

struct RuleState {
    rule: Rule,
    /// Subject -> when its current breach started (ms).
    pending: HashMap<String, u64>,
    last_fired_ms: Option<u64>,
    running: bool,
}

/// Every rule's state, and the guards shared by all rules.
pub struct Evaluator {
    rules: Vec<RuleState>,
    /// Firing times of the last hour, oldest first (at most `max_per_hour`).
    fired: VecDeque<u64>,
    max_per_hour: usize,
    max_concurrent: usize,
}

const HOUR_MS: u64 = 3_600_000;

impl Evaluator {
    #[must_use]
    pub fn new(rules: Vec<Rule>, max_per_hour: u32, max_concurrent: u32) -> Self {
        Self {
            rules: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    pending: HashMap::new(),
                    last_fired_ms: None,
                    running: false,
                })
                .collect(),
            fired: VecDeque::new(),
            max_per_hour: max_per_hour as usize,
            max_concurrent: max_concurrent as usize,
        }
    }

    /// The rules, for listing.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Whether any rule watches `signal` (signals nobody watches are not
    /// sampled).
    #[must_use]
    pub fn watches(&self, signal: Signal) -> bool {
        self.rules.iter().any(|r| r.rule.signal == signal)
    }

    /// The distinct quantiles the query rules ask for.
    #[must_use]
    pub fn quantiles(&self) -> Vec<f64> {
        let mut qs: Vec<f64> = Vec::new();
        for r in &self.rules {
            if r.rule.signal == Signal::QueryLatency
                && !qs.iter().any(|q| (q - r.rule.quantile).abs() < 1e-9)
            {
                qs.push(r.rule.quantile);
            }
        }
        qs
    }

    /// Each rule's state now.
    #[must_use]
    pub fn states(&self, now_ms: u64) -> Vec<(String, State)> {
        self.rules
            .iter()
            .map(|r| {
                let state = if r.running {
                    State::Firing
                } else if r
                    .last_fired_ms
                    .is_some_and(|t| now_ms < t + r.rule.cooldown.as_millis() as u64)
                {
                    State::Cooling
                } else if r.pending.is_empty() {
                    State::Ok
                } else {
                    State::Pending
                };
                (r.rule.name.clone(), state)
            })
            .collect()
    }

    /// A firing's captures have all ended.
    pub fn finished(&mut self, rule: &str) {
        if let Some(r) = self.rules.iter_mut().find(|r| r.rule.name == rule) {
            r.running = false;
        }
    }

    fn running(&self) -> usize {
        self.rules.iter().filter(|r| r.running).count()
    }

    /// One tick of `signal`: `observations` are every subject it saw (a
    /// subject not in them is not breaching); with `quantile`, only the
    /// query rules of that quantile look at them. A held breach that a
    /// guard suppresses starts over, so it is counted once per `for`, not
    /// at every tick.
    pub fn observe(
        &mut self,
        now_ms: u64,
        signal: Signal,
        quantile: Option<f64>,
        observations: &[Observation],
    ) -> Vec<Decision> {
        while self.fired.front().is_some_and(|&t| t + HOUR_MS <= now_ms) {
            self.fired.pop_front();
        }
        let mut decisions = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i].rule;
            if rule.signal != signal || quantile.is_some_and(|q| (q - rule.quantile).abs() > 1e-9) {
                continue;
            }
            let Some((obs, since)) = self.rules[i].track(now_ms, observations) else {
                continue;
            };
            let reason = self.guard(i, now_ms);
            let r = &mut self.rules[i];
            if let Some(reason) = reason {
                r.pending.insert(obs.subject.clone(), now_ms);
                decisions.push(Decision::Suppressed {
                    rule: r.rule.name.clone(),
                    reason,
                    observation: obs,
                });
            } else {
                r.pending.clear();
                r.last_fired_ms = Some(now_ms);
                r.running = true;
                self.fired.push_back(now_ms);
                decisions.push(Decision::Fire(Firing {
                    rule: r.rule.clone(),
                    observation: obs,
                    breach_start_ms: since,
                    fire_ms: now_ms,
                }));
            }
        }
        decisions
    }

    fn guard(&self, i: usize, now_ms: u64) -> Option<Suppression> {
        let r = &self.rules[i];
        let cooling = r
            .last_fired_ms
            .is_some_and(|t| now_ms < t + r.rule.cooldown.as_millis() as u64);
        if r.running || cooling {
            Some(Suppression::Cooldown)
        } else if self.fired.len() >= self.max_per_hour {
            Some(Suppression::Cap)
        } else if self.running() >= self.max_concurrent {
            Some(Suppression::Concurrent)
        } else {
            None
        }
    }
}

impl RuleState {
    /// Updates the breaches; returns the worst subject that has held its
    /// breach for the rule's `for`, with when its breach started.
    fn track(&mut self, now_ms: u64, observations: &[Observation]) -> Option<(Observation, u64)> {
        let threshold = self.rule.threshold;
        let breaching: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.value > threshold)
            .filter(|o| self.rule.comm.as_ref().is_none_or(|c| *c == o.label))
            .collect();
        self.pending
            .retain(|s, _| breaching.iter().any(|o| &o.subject == s));
        for o in &breaching {
            if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&o.subject) {
                continue;
            }
            self.pending.entry(o.subject.clone()).or_insert(now_ms);
        }
        let hold = self.rule.hold.as_millis() as u64;
        breaching
            .into_iter()
            .filter_map(|o| {
                let since = *self.pending.get(&o.subject)?;
                (now_ms >= since + hold).then_some((o, since))
            })
            .max_by(|a, b| a.0.value.total_cmp(&b.0.value))
            .map(|(o, since)| (o.clone(), since))
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
