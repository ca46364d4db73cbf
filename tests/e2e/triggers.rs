//! Threshold triggers end to end: a real agent whose rule watches a real
//! process, fires a deeper capture by itself, and writes the bundle (the
//! rule's evidence, the flight recorder's pre-breach profile, the
//! differential flame graph); a held breach inside the cooldown is
//! suppressed and counted.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use qprof_e2e::{ChildGuard, TempDir, agent::AgentRun, build_fixture, pprof_tool, require_root};

/// The CPU rule of the test: only the fixture's comm, so the other busy
/// processes of a shared machine cannot fire it.
const CPU_RULE: &str = r#"
window = "10s"
[triggers]
flight_recorder = "30s"
[[rules]]
name = "burner"
signal = "process_cpu"
comm = "late_burn"
threshold = "50%"
for = "3s"
cooldown = "5m"
action = { kinds = ["cpu"], duration = "4s", hz = 99 }
"#;

fn capture_file(agent: &AgentRun, id: &str, name: &str) -> Vec<u8> {
    let a = agent.get(&format!("/api/captures/{id}/files/{name}"));
    assert_eq!(a.status, 200, "{name}: {}", a.text());
    a.body
}

/// "process cpu > 50% for 3s" (80% is out of reach on this shared 2-CPU host: 65% measured at nice -20, load 9) fires on a fixture that burns after 6 quiet seconds: trigger.json names it, the deeper profile shows the burning function, the pre-breach one the quiet phase, diff.svg exists, and the continued breach inside the cooldown is suppressed and counted.
#[test]
fn cpu_rule_fires_with_prebreach_and_cooldown() {
    require_root();
    let tmp = TempDir::new("trig-cpu");
    let bin = build_fixture("late_burn", &tmp.join("."));
    let mut agent = AgentRun::start("trig-cpu", CPU_RULE, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    // At nice -20: the shared 2-CPU machine runs other people's builds
    // (load 8 measured), where a nice-0 burner gets ~35% of a CPU.
    let child = Command::new("nice")
        .args(["-n", "-20"])
        .arg(&bin)
        .args(["6", "25"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let _guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let meta = loop {
        let list = agent.get("/api/captures").json();
        let done = list.as_array().unwrap().iter().find(|m| {
            m["reason"] == "trigger: burner"
                && m["status"] != "running"
                && m["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "trigger.json")
        });
        if let Some(m) = done {
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no triggered capture:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let fired_after = started.elapsed();
    let id = meta["id"].as_str().unwrap();
    assert_eq!(meta["status"], "done", "{meta}");
    let trigger: serde_json::Value =
        serde_json::from_slice(&capture_file(&agent, id, "trigger.json")).unwrap();
    assert_eq!(trigger["rule"], "burner");
    assert_eq!(trigger["signal"], "process_cpu");
    assert_eq!(trigger["scope"]["pids"][0], pid, "{trigger}");
    assert_eq!(trigger["scope"]["comms"][0], "late_burn");
    assert!(trigger["observed"].as_f64().unwrap() > 50.0, "{trigger}");
    assert_eq!(trigger["stopped"], "duration reached");
    let breach = trigger["breach_start_unix_ms"].as_u64().unwrap();
    let fired = trigger["fired_unix_ms"].as_u64().unwrap();
    let capture = trigger["capture_started_unix_ms"].as_u64().unwrap();
    assert!((3_000..6_000).contains(&(fired - breach)), "{trigger}");
    eprintln!(
        "breach->fire {} ms (rule's for: 3000), fire->capture start {} ms, fixture start->capture listed {:?}",
        fired - breach,
        capture - fired,
        fired_after
    );
    assert!(capture - fired < 2_000, "{trigger}");

    let deeper = tmp.join("deeper.pb.gz");
    std::fs::write(&deeper, capture_file(&agent, id, "cpu.pb.gz")).unwrap();
    let flat = pprof_tool::flat_by_function(&pprof_tool::top(&deeper, "samples"));
    let burn = flat.get("late_burn_spin").copied().unwrap_or(0.0);
    assert!(
        burn >= 100.0,
        "deeper profile (4s at 99 Hz) lacks late_burn_spin: {flat:?}"
    );
    let pre = tmp.join("pre.pb.gz");
    std::fs::write(&pre, capture_file(&agent, id, "prebreach-cpu.pb.gz")).unwrap();
    let cum = pprof_tool::cum_by_function(&pprof_tool::top(&pre, "samples"));
    let quiet = cum.get("quiet_tick").copied().unwrap_or(0.0);
    let burn_before = cum.get("late_burn_spin").copied().unwrap_or(0.0);
    let all_before = cum.get("main").copied().unwrap_or(0.0).max(1.0);
    let all_deeper: f64 = flat.values().sum::<f64>().max(1.0);
    // The quiet phase is there (its clock reads, in the vDSO, count under
    // quiet_tick), and burning is a smaller share before the breach than
    // in the deeper capture taken during it.
    assert!(
        quiet >= 3.0 && burn_before / all_before < burn / all_deeper,
        "pre-breach profile: {cum:?}; deeper: {flat:?}"
    );
    let svg = String::from_utf8(capture_file(&agent, id, "diff.svg")).unwrap();
    assert!(
        svg.contains("late_burn_spin") && svg.contains("<svg"),
        "diff.svg"
    );

    // Still burning inside the 5 min cooldown: suppressed once per `for`.
    agent.wait_log(
        "trigger burner: suppressed (cooldown)",
        Duration::from_secs(15),
    );
    let metrics = agent.get("/metrics").text();
    let line = metrics
        .lines()
        .find(|l| l.contains("trigger_suppressed_cooldown") && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("no suppression counted:\n{metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    eprintln!(
        "flight recorder at firing: {} bytes, pre-breach samples {}",
        trigger["flight_recorder_bytes"], trigger["prebreach_samples"]
    );
    assert!(trigger["flight_recorder_bytes"].as_u64().unwrap() < 8 << 20);
}
