//! The Prometheus references the agent's `/metrics` is checked against:
//! Debian's Prometheus server on loopback (temporary storage and config,
//! killed and removed on drop), `promtool check metrics` (text 0.0.4), and
//! the Python client's strict `OpenMetrics` parser (promtool 2.42 reads only
//! the text format: an `OpenMetrics` body fails on its `info` type line).

use std::{
    io::{Read as _, Write as _},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{ChildGuard, TempDir, agent::free_port};

/// A Prometheus server scraping one target.
pub struct Prometheus {
    /// Declared before `dir`: the server is killed before its storage is removed.
    child: ChildGuard,
    pub port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` on a free loopback port, scraping
    /// `target` (`host:port`, path `/metrics`) every `interval`, and waits
    /// until it is ready (or panics with its log).
    #[must_use]
    pub fn start(tag: &str, target: &str, interval: Duration) -> Self {
        let dir = TempDir::new(&format!("prom-{tag}"));
        // Prometheus durations take integer units: milliseconds.
        let ms = interval.as_millis().max(1);
        let config = format!(
            "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\n\
             scrape_configs:\n  - job_name: qprof\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let conf = dir.join("prometheus.yml");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let port = free_port();
        let log = std::fs::File::create(dir.join("log"))
            .unwrap_or_else(|e| panic!("creating the Prometheus log: {e}"));
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting /usr/bin/prometheus (apt-get install prometheus): {e}")
            });
        let mut server = Self {
            child: ChildGuard(child),
            port,
            dir,
        };
        server.wait_ready(Duration::from_mins(1));
        server
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!("Prometheus exited ({status}):\n{}", self.log());
            }
            let ready = ureq::get(&self.url("/-/ready"))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Prometheus not ready after {timeout:?}:\n{}", self.log());
    }

    /// The server's log so far (its stderr).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET on the HTTP API; the `data` of a `"status":"success"` answer.
    #[must_use]
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let mut req = ureq::get(&self.url(path)).timeout(Duration::from_secs(30));
        for (k, v) in query {
            req = req.query(k, v);
        }
        let resp = match req.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("Prometheus {path}: {e}"),
        };
        let mut body = String::new();
        let _ = resp.into_reader().read_to_string(&mut body);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus {path}: not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "Prometheus {path} {query:?}: {v}");
        v["data"].clone()
    }

    /// An instant query evaluated at `at` (Unix seconds): the result vector.
    #[must_use]
    pub fn query_at(&self, expr: &str, at: f64) -> Vec<serde_json::Value> {
        let time = format!("{at:.3}");
        let data = self.api("/api/v1/query", &[("query", expr), ("time", &time)]);
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a one-element instant query at `at`, if it has one.
    #[must_use]
    pub fn scalar_at(&self, expr: &str, at: f64) -> Option<f64> {
        let result = self.query_at(expr, at);
        let [one] = result.as_slice() else {
            return None;
        };
        one["value"][1].as_str()?.parse().ok()
    }

    /// The scrape targets' health: (`health`, `lastError`) of each.
    #[must_use]
    pub fn target_health(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/targets", &[]);
        data["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["health"].as_str().unwrap_or_default().to_owned(),
                            t["lastError"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs `program args` with `input` on stdin; its output.
fn pipe_into(program: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"))
}

/// `promtool check metrics` on a text 0.0.4 body: exit 0 means it parsed
/// and the linter found nothing (3: lint problems, 1: parse error).
#[must_use]
pub fn promtool_check_metrics(body: &[u8]) -> Output {
    pipe_into("promtool", &["check", "metrics"], body)
}

/// The Python client's `OpenMetrics` parser (Debian's
/// python3-prometheus-client), which enforces the spec: `# EOF`, unit and
/// `_total` suffixes, cumulative histogram buckets ending in `+Inf`,
/// families not interleaved. Prints "families samples" on success.
#[must_use]
pub fn openmetrics_parse(body: &[u8]) -> Output {
    const SCRIPT: &str = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
fams = list(parse(sys.stdin.read()))\n\
print(len(fams), sum(len(f.samples) for f in fams))\n";
    pipe_into("/usr/bin/python3", &["-c", SCRIPT], body)
}

/// GET `url` with an `Accept` header, as a scraper does: (Content-Type, body).
#[must_use]
pub fn scrape(url: &str, accept: &str) -> (String, Vec<u8>) {
    let resp = ureq::get(url)
        .set("Accept", accept)
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|e| panic!("scraping {url}: {e}"));
    let content_type = resp.header("Content-Type").unwrap_or_default().to_owned();
    let mut body = Vec::new();
    let _ = resp.into_reader().read_to_end(&mut body);
    (content_type, body)
}
