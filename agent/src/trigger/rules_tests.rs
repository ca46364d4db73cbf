use std::path::Path;

use super::*;
use crate::daemon::config::Config;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("qprof.toml")).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
[[rules]]
name = "slow"
signal = "query_latency"
quantile = 0.95
threshold = "250ms"
for = "5s"
action = { kinds = ["cpu", "offcpu"], duration = "20s", hz = 199 }
"#;

/// The embedded defaults parse, check, and are the three conservative rules the README documents.
#[test]
fn defaults_are_the_documented_rules() {
    let config = parse("").unwrap();
    let rules = check(&config.rules, DEFAULT_RULES).unwrap();
    let words: Vec<String> = rules.iter().map(Rule::describe).collect();
    assert_eq!(rules.len(), 3, "{words:?}");
    assert_eq!(rules[0].signal, Signal::QueryLatency);
    assert!((rules[0].threshold - 500.0).abs() < 1e-9);
    assert!((rules[0].quantile - 0.99).abs() < 1e-9);
    assert_eq!(rules[0].hold, Duration::from_secs(10));
    assert!((rules[1].threshold - 90.0).abs() < 1e-9);
    assert_eq!(rules[1].hold, Duration::from_secs(30));
    assert!((rules[2].threshold - 50.0).abs() < 1e-9);
    assert_eq!(rules[2].hold, Duration::from_mins(2));
    assert_eq!(rules[2].kinds, [CaptureKind::Memory]);
}

/// A file's own rules replace the defaults, with units converted and the cooldown defaulted.
#[test]
fn own_rules_replace_defaults() {
    let config = parse(GOOD).unwrap();
    let rules = check(&config.rules, GOOD).unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert!((r.quantile - 0.95).abs() < 1e-9 && (r.threshold - 250.0).abs() < 1e-9);
    assert_eq!(r.kinds, [CaptureKind::Cpu, CaptureKind::Offcpu]);
    assert_eq!((r.hz, r.cooldown), (Some(199), Duration::from_mins(10)));
    assert!(parse("rules = []\n").unwrap().rules.is_empty());
}

/// An unknown signal is refused naming the key, the signals known and the line.
#[test]
fn unknown_signal_names_key_and_line() {
    let text = GOOD.replace("query_latency", "gpu_heat");
    let e = parse(&text).unwrap_err();
    assert!(e.contains("gpu_heat") && e.contains("query_latency"), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

/// A threshold without the signal's unit ("250" for a latency, "250ms" for CPU) is refused with the key and line.
#[test]
fn wrong_unit_names_key_and_line() {
    let e = parse(&GOOD.replace("\"250ms\"", "\"250\"")).unwrap_err();
    assert!(
        e.contains("threshold") && e.contains("duration unit"),
        "{e}"
    );
    assert!(e.contains("line 6") && e.contains("\"slow\""), "{e}");
    let cpu = GOOD
        .replace("query_latency", "process_cpu")
        .replace("quantile = 0.95\n", "");
    let e = parse(&cpu).unwrap_err();
    assert!(e.contains("threshold") && e.contains('%'), "{e}");
}

/// A rule with no action is refused by name.
#[test]
fn rule_without_action_is_refused() {
    let text = GOOD.replace(
        "action = { kinds = [\"cpu\", \"offcpu\"], duration = \"20s\", hz = 199 }\n",
        "",
    );
    let e = parse(&text).unwrap_err();
    assert!(
        e.contains("action") && e.contains("missing") && e.contains("line 3"),
        "{e}"
    );
}

/// A quantile outside (0, 1) is refused, with the value and line.
#[test]
fn quantile_outside_unit_interval_is_refused() {
    for q in ["1.0", "0.0", "99.0", "-0.5"] {
        let e = parse(&GOOD.replace("0.95", q)).unwrap_err();
        assert!(
            e.contains("quantile") && e.contains("(0, 1)") && e.contains("line 5"),
            "{q}: {e}"
        );
    }
}

/// Two rules with one name, a bad capture kind and a missing `for` are refused.
#[test]
fn other_mistakes_are_refused() {
    let e = parse(&format!("{GOOD}{GOOD}")).unwrap_err();
    assert!(e.contains("used by two rules"), "{e}");
    let e = parse(&GOOD.replace("\"offcpu\"", "\"gpu\"")).unwrap_err();
    assert!(e.contains("action.kinds") && e.contains("gpu"), "{e}");
    let e = parse(&GOOD.replace("for = \"5s\"\n", "")).unwrap_err();
    assert!(e.contains("for"), "{e}");
}
