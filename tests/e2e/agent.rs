//! `qprof agent` end to end: a real agent with real probes on a loopback
//! port, its capture API, its store, its lifecycle, and its bad inputs.
//! The tests run one at a time (one lock): each counts the BPF programs
//! its agent holds, and two agents at once would only slow each other.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use qprof_e2e::{
    TempDir,
    agent::{AgentRun, held_programs, still_loaded},
    require_root, run_qprof, stderr,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Short windows so a test sees several.
const FAST: &str = "window = \"2s\"\n[captures]\nmax_duration = \"30s\"\n";

/// The capture API: POST, 409 for a second of the same kind, poll, download a pprof `go tool pprof` reads, and every bad request gets its status and a JSON error.
#[test]
fn capture_api_end_to_end_and_bad_requests() {
    require_root();
    let _g = serial();
    let agent = AgentRun::start("api", FAST, &[]);
    assert_eq!(agent.get("/healthz").status, 200);
    let first = agent.post("/api/captures", r#"{"kind":"cpu","duration_s":2,"hz":199}"#);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let second = agent.post("/api/captures", r#"{"kind":"cpu","duration_s":1}"#);
    assert_eq!(second.status, 409, "{}", second.text());
    assert_eq!(second.json()["running"], id.as_str());
    let meta = agent.wait_capture(&id, Duration::from_mins(1));
    assert_eq!(meta["status"], "done", "{meta}");
    let files: Vec<&str> = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(files.contains(&"cpu.pb.gz"), "{meta}");
    let pprof = agent.get(&format!("/api/captures/{id}/files/cpu.pb.gz"));
    assert_eq!(pprof.status, 200);
    let path = agent.dir.join("cpu.pb.gz");
    std::fs::write(&path, &pprof.body).unwrap();
    let top = qprof_e2e::pprof_tool::top(&path, "samples");
    assert!(
        top.contains("flat"),
        "go tool pprof could not read it:\n{top}"
    );
    let listed = agent.get("/api/captures").json();
    assert_eq!(listed[0]["id"], id.as_str());

    for (body, status, needle) in [
        ("{not json", 400, "malformed"),
        (r#"{"kind":"gpu","duration_s":1}"#, 400, "unknown kind"),
        (r#"{"kind":"cpu","duration_s":3600}"#, 400, "maximum"),
        (r#"{"kind":"cpu","duration_s":0}"#, 400, "at least"),
        (
            r#"{"kind":"cpu","duration_s":1,"pids":[999999999]}"#,
            400,
            "no process",
        ),
        (
            r#"{"kind":"cpu","duration_s":1,"color":"red"}"#,
            400,
            "unknown field",
        ),
    ] {
        let a = agent.post("/api/captures", body);
        assert_eq!(a.status, status, "{body}: {}", a.text());
        assert!(
            a.json()["error"].as_str().unwrap().contains(needle),
            "{body}: {}",
            a.text()
        );
    }
    let huge = format!(
        r#"{{"kind":"cpu","duration_s":1,"pids":[{}1]}}"#,
        "1,".repeat(36_000)
    );
    assert_eq!(agent.post("/api/captures", &huge).status, 413);
    assert_eq!(agent.get("/api/captures/nope").status, 404);
    assert!(agent.get("/api/captures/nope").json()["error"].is_string());
    assert_eq!(
        agent
            .get(&format!("/api/captures/{id}/files/meta.json.x"))
            .status,
        404
    );
    for path in [
        format!("/api/captures/{id}/files/..%2F..%2Fqprof.toml"),
        format!("/api/captures/{id}/files/..%2Fmeta.json"),
        "/api/captures/..%2F..%2Fdata/files/qprof.toml".to_owned(),
    ] {
        let a = agent.get(&path);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        assert!(
            !a.text().contains("window"),
            "{path} leaked a file: {}",
            a.text()
        );
    }
    assert_eq!(agent.get("/no/such/thing").status, 404);
    assert_eq!(agent.get("/api/continuous?from=abc").status, 400);
}

/// Continuous windows land on disk and in the API, merge over a range into a valid pprof, and SIGTERM writes the last window and releases every BPF program.
#[test]
fn continuous_windows_and_sigterm() {
    require_root();
    let _g = serial();
    let mut agent = AgentRun::start("windows", FAST, &[]);
    agent.wait_log("cpu is on", Duration::from_mins(1));
    let held = held_programs(agent.child.pid());
    assert!(
        !held.is_empty(),
        "the agent holds no BPF program while running"
    );
    let deadline = Instant::now() + Duration::from_mins(1);
    let windows = loop {
        let list = agent.get("/api/continuous").json();
        let cpu = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["name"].as_str().unwrap_or("").ends_with("cpu.pb.gz"))
            .count();
        if cpu >= 2 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no CPU windows after 60 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        windows
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"].as_str().unwrap_or("").ends_with("syscalls.json")),
        "{windows}"
    );
    let merged = agent.get("/api/continuous?profile=1");
    assert_eq!(merged.status, 200, "{}", merged.text());
    let path = agent.dir.join("merged.pb.gz");
    std::fs::write(&path, &merged.body).unwrap();
    assert!(qprof_e2e::pprof_tool::top(&path, "samples").contains("flat"));
    let before = std::fs::read_dir(agent.data().join("continuous"))
        .unwrap()
        .count();
    let status = agent.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "exit {status}:\n{}", agent.log());
    let after = std::fs::read_dir(agent.data().join("continuous"))
        .unwrap()
        .count();
    assert!(
        after > before,
        "SIGTERM did not write the current window ({before} -> {after})"
    );
    assert_eq!(
        still_loaded(&held),
        Vec::<u32>::new(),
        "programs left behind"
    );
}

/// kill -9 leaves no BPF program behind, and an agent restarted on the same data directory lists the earlier captures, skipping a corrupt one with a warning.
#[test]
fn kill_9_and_restart_keep_the_store() {
    require_root();
    let _g = serial();
    let mut agent = AgentRun::start("restart", FAST, &[]);
    let id = agent
        .post("/api/captures", r#"{"kind":"syscalls","duration_s":1}"#)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        agent.wait_capture(&id, Duration::from_mins(1))["status"],
        "done"
    );
    let pid = agent.child.pid();
    let held = held_programs(pid);
    assert!(!held.is_empty());
    let _ = agent.signal_and_wait(libc::SIGKILL);
    assert!(
        still_loaded(&held).is_empty(),
        "kill -9 left programs loaded"
    );
    let corrupt = agent.data().join("captures/123-cpu");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("meta.json"), b"{\"id\":").unwrap();
    let dir = std::mem::replace(&mut agent.dir, TempDir::new("unused"));
    drop(agent);
    let again = AgentRun::start_in(dir, FAST, &[]);
    let list = again.get("/api/captures").json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str()),
        "{list}"
    );
    assert!(
        again.log().contains("skipping capture directory"),
        "{}",
        again.log()
    );
    let file = again.get(&format!("/api/captures/{id}/files/syscalls.json"));
    assert_eq!(file.status, 200);
}

/// With a token, the API needs it (401 without or wrong) while /metrics and /healthz stay open; binding beyond loopback without one is refused.
#[test]
fn auth_token_and_non_loopback() {
    require_root();
    let _g = serial();
    let dir = TempDir::new("auth-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let conf = format!("{FAST}[continuous]\ncpu = false\nqueries = false\ntcp = false\n");
    let agent = AgentRun::start(
        "auth",
        &conf,
        &["--auth-token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(agent.send("GET", "/api/captures", None, None).status, 401);
    assert_eq!(
        agent
            .send("GET", "/api/captures", None, Some("wrong-token-0123456789"))
            .status,
        401
    );
    assert_eq!(agent.get("/api/captures").status, 200);
    assert_eq!(agent.send("GET", "/metrics", None, None).status, 200);
    assert_eq!(agent.send("GET", "/healthz", None, None).status, 200);
    drop(agent);
    let out = run_qprof(&[
        "agent",
        "--listen",
        "0.0.0.0:9",
        "--data-dir",
        dir.join("d").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without an auth token"),
        "{}",
        stderr(&out)
    );
}

/// Bad configs and start-up conditions fail at once with a clear message: unknown key, wrong type, zero duration, unwritable data dir, port in use.
#[test]
fn bad_config_and_startup_errors() {
    let dir = TempDir::new("agent-bad");
    let cases = [
        ("window = \"10s\"\nwindoww = 3\n", "windoww"),
        ("[continuous]\ncpu_hz = \"fast\"\n", "line 2"),
        ("window = \"0s\"\n", "must be more than 0"),
    ];
    for (text, needle) in cases {
        let conf = dir.join("bad.toml");
        std::fs::write(&conf, text).unwrap();
        let out = run_qprof(&[
            "agent",
            "--config",
            conf.to_str().unwrap(),
            "--print-config",
        ]);
        assert!(!out.status.success(), "{text}");
        assert!(stderr(&out).contains(needle), "{text}: {}", stderr(&out));
    }
    let ok = run_qprof(&["agent", "--print-config"]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("cpu_hz = 19"));
    require_root();
    let _g = serial();
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = run_qprof(&[
        "agent",
        "--data-dir",
        file.join("sub").to_str().unwrap(),
        "--listen",
        "127.0.0.1:1",
    ]);
    assert!(stderr(&out).contains("data directory"), "{}", stderr(&out));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = run_qprof(&[
        "agent",
        "--data-dir",
        dir.join("d2").to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(
        stderr(&out).contains("Address already in use"),
        "{}",
        stderr(&out)
    );
}

/// SIGHUP with a broken config keeps the agent running on the old one; a good one is applied.
#[test]
fn sighup_reload_keeps_old_config_when_broken() {
    require_root();
    let _g = serial();
    let conf = format!("{FAST}[continuous]\ncpu = false\nqueries = false\ntcp = false\n");
    let mut agent = AgentRun::start("hup", &conf, &[]);
    std::fs::write(agent.dir.join("qprof.toml"), "window = [").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.child.pid() as i32, libc::SIGHUP) };
    agent.wait_log("keeping the old config", Duration::from_secs(10));
    assert_eq!(agent.get("/healthz").status, 200);
    let too_long = agent.post("/api/captures", r#"{"kind":"syscalls","duration_s":20}"#);
    assert_eq!(
        too_long.status,
        202,
        "old max_duration of 30s must still apply: {}",
        too_long.text()
    );
    std::fs::write(
        agent.dir.join("qprof.toml"),
        "[captures]\nmax_duration = \"5s\"\n",
    )
    .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent.child.pid() as i32, libc::SIGHUP) };
    agent.wait_log("SIGHUP: reloaded", Duration::from_secs(10));
    let a = agent.post("/api/captures", r#"{"kind":"tcp","duration_s":20}"#);
    assert_eq!(a.status, 400, "the new max_duration applies: {}", a.text());
}

/// `qprof capture` starts a capture on the agent and downloads its files; `qprof top --json` prints the agent's queries; an agent error is shown as it is.
#[test]
fn capture_and_top_clients() {
    require_root();
    let _g = serial();
    let agent = AgentRun::start("client", FAST, &[]);
    let out_dir = agent.dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let url = agent.url("");
    let out = run_qprof(&[
        "capture",
        "--agent",
        &url,
        "--kind",
        "cpu",
        "--duration",
        "1s",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let top = qprof_e2e::pprof_tool::top(&out_dir.join("cpu.pb.gz"), "samples");
    assert!(top.contains("flat"), "{top}");
    let out = run_qprof(&[
        "capture",
        "--agent",
        &url,
        "--kind",
        "gpu",
        "--duration",
        "1s",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("400") && stderr(&out).contains("unknown kind"),
        "{}",
        stderr(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent
        .get("/api/syscalls")
        .json()
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            Instant::now() < deadline,
            "no syscall window:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = run_qprof(&["top", "--agent", &url, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all["queries"].is_array() && all["tcp"].is_array(), "{all}");
    let syscalls = all["syscalls"].as_array().unwrap();
    assert!(
        syscalls.iter().any(|r| r["calls"].as_u64() > Some(0)),
        "{all}"
    );
    let out = run_qprof(&["top", "--agent", &url, "--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in ["QUERIES", "SYSCALLS", "TCP"] {
        assert!(text.contains(heading), "{text}");
    }
}

/// With `[pyroscope] url`, each CPU window reaches the ingest API as a valid gzip pprof (read by `go tool pprof`) in a multipart `profile` field, one request per process, labelled with `service_name` (its comm), host and pid.
#[test]
fn pyroscope_push_of_each_window() {
    require_root();
    let _g = serial();
    let receiver = qprof_e2e::receiver::Receiver::start();
    let conf = format!(
        "window = \"2s\"\n[continuous]\nqueries = false\nsyscalls = false\ntcp = false\n\
         [pyroscope]\nurl = \"http://127.0.0.1:{}\"\n",
        receiver.port
    );
    let agent = AgentRun::start("pyroscope", &conf, &[]);
    // A process of ours that is surely on a CPU in every window.
    let burner = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let burner = qprof_e2e::ChildGuard(burner);
    let deadline = Instant::now() + Duration::from_mins(1);
    let ours = loop {
        let mine: Vec<_> = receiver
            .recorded()
            .into_iter()
            .filter(|r| {
                let line = r.request_line.replace("%3D", "=").replace("%3d", "=");
                line.contains(&format!("pid={}", burner.pid()))
            })
            .collect();
        if !mine.is_empty() {
            break mine;
        }
        assert!(
            Instant::now() < deadline,
            "no push for the burner:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let req = &ours[0];
    assert!(
        req.request_line.starts_with("POST /ingest?"),
        "{}",
        req.request_line
    );
    for needle in [
        "format=pprof",
        "from=",
        "until=",
        "service_name%3Dsh",
        "host%3D",
    ] {
        let line = req
            .request_line
            .replace("service_name=sh", "service_name%3Dsh");
        assert!(
            line.contains(needle) || req.request_line.contains(needle),
            "{needle} missing: {}",
            req.request_line
        );
    }
    let profile = req
        .form_field("profile")
        .expect("a multipart profile field");
    assert_eq!(&profile[..2], &[0x1f, 0x8b], "not gzip");
    let path = agent.dir.join("pushed.pb.gz");
    std::fs::write(&path, &profile).unwrap();
    let top = qprof_e2e::pprof_tool::top(&path, "samples");
    assert!(top.contains("flat"), "{top}");
}

/// The agent's own CPU profile is a gzip pprof `go tool pprof` reads; a bad `seconds` is a 400 with a JSON error.
#[test]
fn self_profile_endpoint() {
    require_root();
    let _g = serial();
    let conf = format!("{FAST}[continuous]\nqueries = false\ntcp = false\n");
    let agent = AgentRun::start("selfprof", &conf, &[]);
    let a = agent.get("/debug/pprof/profile?seconds=2");
    assert_eq!(a.status, 200, "{}", a.text());
    let path = agent.dir.join("self.pb.gz");
    std::fs::write(&path, &a.body).unwrap();
    let top = qprof_e2e::pprof_tool::top(&path, "cpu");
    assert!(top.contains("flat"), "{top}");
    for bad in ["seconds=0", "seconds=9999", "seconds=abc"] {
        let a = agent.get(&format!("/debug/pprof/profile?{bad}"));
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
        assert!(a.json()["error"].is_string());
    }
}
