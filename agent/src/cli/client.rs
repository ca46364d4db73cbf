//! `qprof capture` and `qprof top`: clients of a running agent's API.

use std::{
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Deserialize;

use super::values;
use crate::{aggregate::queries::QueryRow, export::files};

/// Largest file `qprof capture` downloads: profiles of a busy host for
/// ten minutes stay well under it; anything bigger is not a profile.
const MAX_DOWNLOAD: u64 = 1 << 30;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The agent's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9876")]
    pub agent: String,
    /// File holding the agent's bearer token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// cpu, offcpu, memory, queries, syscalls or tcp.
    #[arg(long)]
    pub kind: String,
    /// How long the agent captures, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = values::parse_duration)]
    pub duration: Duration,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID", value_parser = values::parse_pid)]
    pub pids: Vec<u32>,
    /// Samples per second per CPU (cpu captures).
    #[arg(long, value_parser = values::parse_hz)]
    pub hz: Option<u64>,
    /// Directory the capture's files are downloaded into (created 0700).
    #[arg(short = 'o', long = "output", default_value = ".")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print once and exit (default on a non-terminal).
    #[arg(long)]
    pub once: bool,
    /// Print the agent's JSON instead of a table (implies --once).
    #[arg(long)]
    pub json: bool,
    /// Rows shown.
    #[arg(long, default_value_t = 20, value_parser = values::parse_top)]
    pub top: usize,
}

#[derive(Debug, Deserialize)]
struct Meta {
    id: String,
    status: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

struct Client {
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(c: &ConnectArgs) -> anyhow::Result<Self> {
        let token = match &c.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the token file {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        if !(c.agent.starts_with("http://") || c.agent.starts_with("https://")) {
            bail!(
                "--agent {:?}: expected a URL such as http://127.0.0.1:9876",
                c.agent
            );
        }
        Ok(Self {
            base: c.agent.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r =
            ureq::request(method, &format!("{}{path}", self.base)).timeout(Duration::from_secs(30));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }
}

/// The response, or the agent's own error message.
fn send(r: ureq::Request, body: Option<serde_json::Value>) -> anyhow::Result<ureq::Response> {
    let url = r.url().to_owned();
    let result = match body {
        Some(b) => r.send_json(b),
        None => r.call(),
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            bail!("the agent answered {code}: {}", message.trim())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("connecting to the agent at {url}"))),
    }
}

pub fn capture(args: &CaptureArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    files::check_writable(&args.output.join("probe"))
        .with_context(|| format!("output directory {}", args.output.display()))?;
    let body = serde_json::json!({
        "kind": args.kind,
        "duration_s": args.duration.as_secs_f64(),
        "pids": args.pids,
        "hz": args.hz,
    });
    let meta: Meta = send(client.request("POST", "/api/captures"), Some(body))?.into_json()?;
    eprintln!(
        "qprof: capture {} started on the agent ({:.1}s)",
        meta.id,
        args.duration.as_secs_f64()
    );
    let started = Instant::now();
    let meta = loop {
        std::thread::sleep(Duration::from_millis(500));
        let m: Meta = send(
            client.request("GET", &format!("/api/captures/{}", meta.id)),
            None,
        )?
        .into_json()?;
        if m.status != "running" {
            break m;
        }
        if std::io::stderr().is_terminal() {
            let left = args.duration.saturating_sub(started.elapsed());
            eprint!("\rqprof: {:.0}s left   ", left.as_secs_f64());
        }
    };
    if meta.status != "done" {
        bail!(
            "capture {} failed on the agent: {}",
            meta.id,
            meta.error.unwrap_or_default()
        );
    }
    for name in &meta.files {
        download(&client, &meta.id, name, &args.output)?;
    }
    eprintln!(
        "qprof: capture {} written to {} ({})",
        meta.id,
        args.output.display(),
        meta.files.join(", ")
    );
    Ok(())
}

fn download(client: &Client, id: &str, name: &str, dir: &Path) -> anyhow::Result<()> {
    if !crate::export::store::valid_file_name(name) {
        bail!("the agent listed a file name that is not safe to write: {name:?}");
    }
    let resp = send(
        client.request("GET", &format!("/api/captures/{id}/files/{name}")),
        None,
    )?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DOWNLOAD {
        bail!("{name} is larger than {MAX_DOWNLOAD} bytes; not downloaded");
    }
    files::write_private(&dir.join(name), &bytes)?;
    Ok(())
}

pub fn top(args: &TopArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connect)?;
    let refresh = !(args.once || args.json) && std::io::stdout().is_terminal();
    loop {
        let resp = send(client.request("GET", "/api/queries"), None)?;
        if args.json {
            print!("{}", resp.into_string()?);
            return Ok(());
        }
        let rows: Vec<QueryRow> = resp
            .into_json()
            .context("reading the agent's /api/queries")?;
        if refresh {
            print!("\x1b[2J\x1b[H");
        }
        print!("{}", render_queries(&rows, args.top));
        if !refresh {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The columns `record queries` prints, from the agent's rows.
fn render_queries(rows: &[QueryRow], top: usize) -> String {
    let us = |v: f64| super::report::human_ns((v * 1000.0) as u64);
    let body: Vec<Vec<String>> = rows
        .iter()
        .take(top)
        .map(|r| {
            let text: String = r.fingerprint.chars().take(70).collect();
            vec![
                r.fingerprint_id.clone(),
                r.db.to_string(),
                r.calls.to_string(),
                r.errors.to_string(),
                us(r.p50_us),
                us(r.p99_us),
                us(r.total_us),
                text,
            ]
        })
        .collect();
    super::report::table(
        &[
            "ID",
            "DB",
            "CALLS",
            "ERRORS",
            "P50",
            "P99",
            "TOTAL",
            "FINGERPRINT",
        ],
        &body,
    )
}
