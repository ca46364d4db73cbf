//! The Pyroscope pusher against a loopback HTTP receiver that records
//! every request; bodies are checked with `go tool pprof`, the reference
//! reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use profiles::{Label, Line, Location, Profile, Sample, ValueType};

use super::*;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    content_type: String,
    body: Vec<u8>,
    at: Instant,
}

/// A loopback HTTP/1.1 server answering every request with `status`.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(status));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (Arc::clone(&status), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = serve_one(stream, &st, &sn);
            }
        });
        Self { url, status, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one request (headers, Content-Length body), records it, answers.
fn serve_one(
    stream: std::net::TcpStream,
    status: &AtomicU16,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap_or(0),
            "content-type" => v.trim().clone_into(&mut content_type),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    seen.lock().unwrap().push(Seen {
        target,
        content_type,
        body,
        at: Instant::now(),
    });
    let code = status.load(Ordering::Relaxed);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Percent-decoding (the receiver's view of the query string).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The query parameters of a request target, decoded.
fn params(target: &str) -> BTreeMap<String, String> {
    let (path, query) = target.split_once('?').unwrap();
    assert_eq!(path, "/ingest");
    query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (decode(k), decode(v))
        })
        .collect()
}

/// The `profile` field of a multipart/form-data body.
fn profile_part(seen: &Seen) -> Vec<u8> {
    let boundary = seen
        .content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("content type {:?}", seen.content_type));
    let delim = format!("--{boundary}");
    let body = &seen.body;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let start = find(body, delim.as_bytes(), 0).unwrap();
    let headers_end = find(body, b"\r\n\r\n", start).unwrap();
    let headers = String::from_utf8_lossy(&body[start..headers_end]);
    assert!(
        headers.contains("name=\"profile\""),
        "first part is not `profile`: {headers}"
    );
    let data_start = headers_end + 4;
    let end = find(body, format!("\r\n{delim}--").as_bytes(), data_start).unwrap();
    body[data_start..end].to_vec()
}

fn line(function: &str) -> Location {
    Location {
        lines: vec![Line {
            function: function.to_owned(),
            ..Line::default()
        }],
        ..Location::default()
    }
}

/// A CPU window with two processes' samples and one unlabelled sample.
fn window() -> Profile {
    let sample = |pid: i64, comm: &str, f: &str, n: i64| Sample {
        stack: vec![line(f), line("main")],
        values: vec![n, n * 10_101_010],
        labels: vec![Label::num("pid", pid, ""), Label::str("comm", comm)],
    };
    Profile {
        sample_types: vec![
            ValueType {
                r#type: "samples".into(),
                unit: "count".into(),
            },
            ValueType {
                r#type: "cpu".into(),
                unit: "nanoseconds".into(),
            },
        ],
        period_type: ValueType {
            r#type: "cpu".into(),
            unit: "nanoseconds".into(),
        },
        period: 10_101_010,
        samples: vec![
            sample(101, "postgres", "ExecScan", 30),
            sample(202, "my app{x}", "render_page", 5),
            sample(101, "postgres", "heap_getnext", 12),
            Sample {
                stack: vec![line("orphan")],
                values: vec![1, 1],
                labels: vec![],
            },
        ],
        ..Profile::default()
    }
}

fn config(url: &str) -> PyroscopeConfig {
    PyroscopeConfig {
        host: "test-host".to_owned(),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..PyroscopeConfig::new(url)
    }
}

/// Waits (yielding to the sender task) until `done` or `limit` elapses.
async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// `go tool pprof -raw` on `gz`: the reference reader's dump.
fn go_pprof_raw(gz: &[u8], name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("qprof-pyro-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("profile.pb.gz");
    std::fs::write(&path, gz).unwrap();
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&path)
        .env("PPROF_TMPDIR", &dir)
        .output()
        .unwrap_or_else(|e| panic!("running go tool pprof (apt-get install golang-go): {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "go tool pprof -raw refused the body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each process of a window is one POST /ingest whose query names the app
/// with `service_name`, `host` and `pid` labels and whose `profile` field
/// is a gzip pprof go's pprof reads, holding that process's samples only.
#[tokio::test]
async fn pushes_one_labelled_gzip_pprof_per_process() {
    let receiver = Receiver::start(200);
    let pusher = Pusher::start(config(&receiver.url)).unwrap();
    pusher
        .push_window(&window(), 1_700_000_000, 1_700_000_060)
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || pusher
            .stats()
            .pushed
            .load(Ordering::Relaxed)
            == 2)
        .await
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let mut by_pid = BTreeMap::new();
    for request in &seen {
        let p = params(&request.target);
        assert_eq!(p["format"], "pprof");
        assert_eq!(p["from"], "1700000000");
        assert_eq!(p["until"], "1700000060");
        by_pid.insert(p["name"].clone(), profile_part(request));
    }
    let names: Vec<&String> = by_pid.keys().collect();
    assert_eq!(
        names,
        [
            "qprof{host=test-host,pid=101,service_name=postgres}",
            "qprof{host=test-host,pid=202,service_name=my app_x_}"
        ]
    );
    let pg = go_pprof_raw(&by_pid[names[0].as_str()], "pg");
    assert!(
        pg.contains("ExecScan") && pg.contains("heap_getnext"),
        "{pg}"
    );
    assert!(
        !pg.contains("render_page") && !pg.contains("orphan"),
        "{pg}"
    );
    // pprof -raw prints each sample's values: 30 and 12 samples.
    let squeezed = pg.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        squeezed.contains("30 303030300: 1 2 comm:[postgres] pid:[101]")
            && squeezed.contains("12 121212120: 3 2 comm:[postgres] pid:[101]"),
        "{pg}"
    );
    let app = go_pprof_raw(&by_pid[names[1].as_str()], "app");
    assert!(
        app.contains("render_page") && !app.contains("ExecScan"),
        "{app}"
    );
    assert_eq!(pusher.stats().failed.load(Ordering::Relaxed), 0);
}

/// A server answering 500 makes the client retry with growing gaps and
/// count every failure; once it answers 200 the same profile goes through.
#[tokio::test]
async fn server_errors_back_off_and_are_counted() {
    let receiver = Receiver::start(500);
    let pusher = Pusher::start(config(&receiver.url)).unwrap();
    let mut one = window();
    one.samples.truncate(1);
    pusher.push_window(&one, 10, 20).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = receiver.seen();
    let failed = pusher.stats().failed.load(Ordering::Relaxed);
    // 50, 100, 200, 400, 400, 400 ms: ~7 attempts in 1.5 s, not hundreds.
    assert!((4..=9).contains(&seen.len()), "{} attempts", seen.len());
    assert!(
        failed >= 4 && failed as usize <= seen.len(),
        "{failed} failures counted"
    );
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    // The first gap also holds a connection set-up; compare further out.
    assert!(
        gaps[1] > gaps[0] && gaps[3] >= gaps[0] * 3,
        "gaps do not grow: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(700)),
        "not capped: {gaps:?}"
    );
    assert_eq!(pusher.stats().pushed.load(Ordering::Relaxed), 0);
    assert_eq!(pusher.queued(), 1, "the profile is kept for a retry");
    receiver.status.store(200, Ordering::Relaxed);
    assert!(
        wait_for(Duration::from_secs(3), || pusher
            .stats()
            .pushed
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    assert_eq!(pusher.queued(), 0);
}

/// A 4xx other than 429 is the server refusing this profile: counted as
/// rejected and dropped, not retried for ever.
#[tokio::test]
async fn client_errors_are_rejected_once() {
    let receiver = Receiver::start(400);
    let pusher = Pusher::start(config(&receiver.url)).unwrap();
    let mut one = window();
    one.samples.truncate(1);
    pusher.push_window(&one, 10, 20).unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || pusher
            .stats()
            .rejected
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(pusher.queued(), 0);
}

/// Pushing never waits for the network: with the server unreachable, 100
/// pushes return at once and the bounded queue keeps the newest,
/// counting every profile it drops.
#[tokio::test]
async fn push_never_blocks_and_drops_oldest() {
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pusher = Pusher::start(PyroscopeConfig {
        queue_capacity: 3,
        ..config(&format!("http://127.0.0.1:{port}"))
    })
    .unwrap();
    let item = |n: u64| PushItem {
        labels: BTreeMap::new(),
        from: n,
        until: n + 1,
        pprof_gz: vec![u8::try_from(n).unwrap()],
    };
    let start = Instant::now();
    for n in 0..100 {
        pusher.push(item(n));
    }
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(pusher.queued(), 3);
    assert_eq!(
        pusher.stats().dropped_queue_full.load(Ordering::Relaxed),
        97
    );
    let kept: Vec<u64> = pusher
        .queue
        .items
        .lock()
        .unwrap()
        .iter()
        .map(|(_, i)| i.from)
        .collect();
    assert_eq!(kept, [97, 98, 99]);
    assert!(
        wait_for(Duration::from_secs(2), || pusher
            .stats()
            .failed
            .load(Ordering::Relaxed)
            >= 1)
        .await
    );
}

/// Back-off doubles from its minimum, stops at its maximum, and starts
/// over after a success.
#[test]
fn backoff_doubles_caps_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let delays: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(1));
    for _ in 0..100 {
        b.next_delay();
    }
    assert_eq!(b.next_delay(), Duration::from_secs(10));
}

/// More processes than the cap: the busiest are kept and the rest counted.
#[test]
fn split_keeps_the_busiest_processes() {
    let split = split_by_process(&window(), 1);
    assert_eq!(split.left_out, 1);
    assert_eq!(split.processes.len(), 1);
    assert_eq!(
        (split.processes[0].pid, split.processes[0].comm.as_str()),
        (101, "postgres")
    );
    assert_eq!(split.processes[0].profile.samples.len(), 2);
}

/// URLs Pyroscope cannot be reached at are refused at start, by name.
#[test]
fn bad_urls_are_refused() {
    for (url, why) in [
        ("pyroscope:4040", "expected http://"),
        ("https://p.example", "https is not supported"),
        ("http://", "invalid Pyroscope URL"),
    ] {
        let err = ingest_base(url).unwrap_err().to_string();
        assert!(err.contains(why) && err.contains(url), "{url}: {err}");
    }
    assert_eq!(
        ingest_base("http://p:4040/").unwrap(),
        "http://p:4040/ingest"
    );
}
