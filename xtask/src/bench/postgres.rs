//! A throw-away PostgreSQL cluster for benchmarks: created in a scratch
//! directory, listening on 127.0.0.1 only, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so everything runs as the `postgres`
//! user (created by Debian's package) through `runuser`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{on_path, run_cmd};

/// Debian's PostgreSQL binaries live in a versioned directory.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file() && p.join("pgbench").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Installs `postgresql` (server and pgbench) with apt-get when missing.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    if let Some(dir) = bin_dir() {
        return Ok(dir);
    }
    if !on_path("apt-get") {
        bail!("PostgreSQL is not installed and apt-get is not available");
    }
    eprintln!("bench: installing postgresql");
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "postgresql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    bin_dir().context("postgresql installed but no /usr/lib/postgresql/*/bin/initdb found")
}

/// A running cluster; dropping it stops the server and deletes its files.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

impl Cluster {
    /// `initdb` + `pg_ctl start` on `port`, in a fresh directory.
    pub fn start(bin: &Path, port: u16) -> anyhow::Result<Self> {
        Self::start_with(bin, port, false)
    }

    /// As [`Self::start`]; with `ssl`, the server also accepts TLS, with a
    /// self-signed certificate made here (clients choose by `PGSSLMODE`).
    pub fn start_with(bin: &Path, port: u16, ssl: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("qprof-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run_cmd(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        // From here on, drop cleans up even if start-up fails half-way.
        let cluster = Self {
            bin: bin.to_path_buf(),
            dir,
            port,
        };
        let data = cluster.dir.join("data");
        run_cmd(
            as_postgres(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data)
                .stdout(std::process::Stdio::null()),
        )?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            cluster.dir.display()
        );
        if ssl {
            let (cert, key) = (
                cluster.dir.join("server.crt"),
                cluster.dir.join("server.key"),
            );
            run_cmd(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(std::process::Stdio::null()),
            )?;
            run_cmd(Command::new("chmod").arg("600").arg(&key))?;
            run_cmd(Command::new("chown").arg("postgres").arg(&cert).arg(&key))?;
            let _ = write!(
                options,
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        run_cmd(
            as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(cluster.dir.join("log"))
                .args(["-w", "start"])
                .stdout(std::process::Stdio::null()),
        )?;
        Ok(cluster)
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let path = self.dir.join("data/postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", path.display()))
    }

    /// `pgbench` against this cluster over TCP on loopback.
    pub fn pgbench(&self) -> Command {
        let mut cmd = as_postgres(&self.bin.join("pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        cmd
    }
}

impl Cluster {
    /// Runs `n` distinct statements (`SELECT 1 AS c<i>`: one fingerprint
    /// each) through `psql` over loopback TCP, from a script written to
    /// `script`.
    pub fn distinct_statements(&self, n: usize, script: &Path) -> anyhow::Result<()> {
        let mut text = String::with_capacity(n * 24);
        for i in 0..n {
            let _ = writeln!(text, "SELECT 1 AS c{i};");
        }
        std::fs::write(script, text).context("writing the statements")?;
        run_cmd(
            Command::new("psql")
                .args(["-X", "-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-f"])
                .arg(script)
                .arg("postgres")
                .stdout(std::process::Stdio::null()),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `tps = N (without initial connection time)` figure of pgbench.
pub fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .and_then(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TPS line of pgbench 15 is found; other lines are not mistaken for it.
    #[test]
    fn parses_pgbench_tps() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 0.066 ms\n\
                   initial connection time = 3.412 ms\ntps = 60321.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(60_321.123_456));
        assert_eq!(parse_tps("tps = x\n"), None);
    }
}
