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
use crate::{
    aggregate::{queries::QueryRow, syscalls::SyscallRow, tcp::TcpRow},
    export::files,
};

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
        let get = |path: &str| -> anyhow::Result<serde_json::Value> {
            send(client.request("GET", path), None)?
                .into_json()
                .with_context(|| format!("reading the agent's {path}"))
        };
        let (queries, syscalls, tcp) = (
            get("/api/queries")?,
            get("/api/syscalls")?,
            get("/api/tcp")?,
        );
        if args.json {
            let all = serde_json::json!({ "queries": queries, "syscalls": syscalls, "tcp": tcp });
            println!("{all}");
            return Ok(());
        }
        let queries: Vec<QueryRow> =
            serde_json::from_value(queries).context("the agent's queries")?;
        let syscalls: Vec<SyscallRow> =
            serde_json::from_value(syscalls).context("the agent's syscalls")?;
        let tcp: Vec<TcpRow> = serde_json::from_value(tcp).context("the agent's TCP peers")?;
        if refresh {
            print!("\x1b[2J\x1b[H");
        }
        println!("QUERIES (since the agent started)");
        print!("{}", super::record_queries::render(&queries, args.top));
        println!("\nSYSCALLS (last window)");
        print!("{}", super::record_syscalls::render(&syscalls, args.top));
        println!("\nTCP (last window)");
        print!(
            "{}",
            super::record_tcp::render(&tcp[..tcp.len().min(args.top)])
        );
        if !refresh {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
