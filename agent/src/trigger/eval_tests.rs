use std::time::Duration;

use super::*;
use crate::{probes::component::CaptureKind, trigger::rules::Scope};

fn rule(name: &str, threshold: f64, hold_s: u64, cooldown_s: u64) -> Rule {
    Rule {
        name: name.into(),
        signal: Signal::ProcessCpu,
        quantile: 0.99,
        threshold,
        hold: Duration::from_secs(hold_s),
        scope: Scope::Implicated,
        comm: None,
        kinds: vec![CaptureKind::Cpu],
        duration: Duration::from_secs(5),
        hz: None,
        cooldown: Duration::from_secs(cooldown_s),
    }
}

fn obs(pid: u32, value: f64) -> Observation {
    Observation {
        subject: pid.to_string(),
        value,
        pids: vec![pid],
        label: "burn".into(),
    }
}

fn fires(d: &[Decision]) -> usize {
    d.iter().filter(|d| matches!(d, Decision::Fire(_))).count()
}

/// A breach fires only once it has held for the rule's `for`, with when it started; a dip starts it over.
#[test]
fn fires_after_hold_and_dip_resets() {
    let mut e = Evaluator::new(vec![rule("hot", 80.0, 3, 60)], 10, 2);
    assert_eq!(
        fires(&e.observe(1_000, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
        0
    );
    assert_eq!(e.states(1_000)[0].1, State::Pending);
    assert_eq!(
        fires(&e.observe(2_000, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
        0
    );
    // A dip below the threshold: the breach starts over.
    assert_eq!(
        fires(&e.observe(3_000, Signal::ProcessCpu, None, &[obs(7, 10.0)])),
        0
    );
    assert_eq!(e.states(3_000)[0].1, State::Ok);
    for t in [4_000, 5_000, 6_000] {
        assert_eq!(
            fires(&e.observe(t, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
            0
        );
    }
    let d = e.observe(
        7_000,
        Signal::ProcessCpu,
        None,
        &[obs(7, 95.0), obs(8, 99.0)],
    );
    let Some(Decision::Fire(f)) = d.first() else {
        panic!("no fire: {d:?}")
    };
    assert_eq!((f.breach_start_ms, f.fire_ms), (4_000, 7_000));
    assert_eq!(f.observation.pids, [7], "pid 8 only just started breaching");
    assert_eq!(e.states(7_000)[0].1, State::Firing);
}

/// Within the cooldown a held breach is suppressed (counted once per `for`), after it the rule fires again.
#[test]
fn cooldown_suppresses_then_expires() {
    let mut e = Evaluator::new(vec![rule("hot", 80.0, 2, 10)], 10, 2);
    e.observe(0, Signal::ProcessCpu, None, &[obs(7, 95.0)]);
    e.observe(1_000, Signal::ProcessCpu, None, &[obs(7, 95.0)]);
    assert_eq!(
        fires(&e.observe(2_000, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
        1
    );
    e.finished("hot");
    assert_eq!(e.states(2_500)[0].1, State::Cooling);
    let mut suppressed = 0;
    for t in (3_000..12_000).step_by(1_000) {
        for d in e.observe(t, Signal::ProcessCpu, None, &[obs(7, 95.0)]) {
            match d {
                Decision::Suppressed { reason, .. } => {
                    assert_eq!(reason, Suppression::Cooldown);
                    suppressed += 1;
                }
                Decision::Fire(_) => panic!("fired inside the cooldown at {t}"),
            }
        }
    }
    assert_eq!(
        suppressed, 4,
        "once per `for` (2s) of continued breach, not per tick"
    );
    assert_eq!(
        fires(&e.observe(12_000, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
        0
    );
    assert_eq!(
        fires(&e.observe(13_000, Signal::ProcessCpu, None, &[obs(7, 95.0)])),
        1
    );
}

/// The hourly cap and the concurrent cap hold across rules, and the cap frees after an hour.
#[test]
fn caps_hold_across_rules() {
    let rules = vec![rule("a", 50.0, 0, 0), rule("b", 50.0, 0, 0)];
    let mut e = Evaluator::new(rules, 2, 1);
    let d = e.observe(0, Signal::ProcessCpu, None, &[obs(1, 90.0)]);
    assert_eq!(fires(&d), 1);
    assert!(matches!(
        d[1],
        Decision::Suppressed {
            reason: Suppression::Concurrent,
            ..
        }
    ));
    e.finished("a");
    assert_eq!(
        fires(&e.observe(10, Signal::ProcessCpu, None, &[obs(1, 90.0)])),
        1
    );
    e.finished("b");
    // "a" fired again at 10 (it had finished); now the hour's 2 are used.
    let d = e.observe(20, Signal::ProcessCpu, None, &[obs(1, 90.0)]);
    assert_eq!(fires(&d), 0, "{d:?}");
    assert!(
        d.iter().any(|d| matches!(
            d,
            Decision::Suppressed {
                reason: Suppression::Cap,
                ..
            }
        )),
        "{d:?}"
    );
    e.finished("a");
    assert_eq!(
        fires(&e.observe(3_600_020, Signal::ProcessCpu, None, &[obs(1, 90.0)])),
        1
    );
}
