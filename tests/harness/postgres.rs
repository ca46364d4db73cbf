//! A throw-away PostgreSQL server on loopback, in a temporary data
//! directory, stopped and removed when dropped (also when a test fails).
//! PostgreSQL refuses to run as root, so everything runs as `postgres`.

use std::{
    fmt::Write as _,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The newest installed server's binaries (`/usr/lib/postgresql/N/bin`).
#[must_use]
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)")
    })
}

/// A running server.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// `ssl = on` with a self-signed certificate; clients require TLS.
    pub ssl: bool,
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("finding a free port: {e}"),
    }
}

impl PgServer {
    /// initdb + start on a free loopback port; waits until it accepts.
    #[must_use]
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, false)
    }

    /// As [`Self::start`], with `ssl = on` and a self-signed certificate
    /// made here by `openssl req -x509` when `ssl` is set (clients then use
    /// `sslmode=require`).
    #[must_use]
    pub fn start_with(tag: &str, ssl: bool) -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("qprof-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap_or_default();
        let status = Command::new("chown").arg("postgres").arg(&dir).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "chown postgres {}",
            dir.display()
        );
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap_or_else(|e| panic!("running initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let server = Self {
            dir,
            bin,
            port,
            ssl,
        };
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            server.dir.display()
        );
        if ssl {
            let (cert, key) = self_signed(&server.dir);
            let _ = write!(
                opts,
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        let out = as_postgres(&server.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(server.dir.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap_or_else(|e| panic!("running pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// Runs a client program (psql, pgbench, ...) against this server.
    #[must_use]
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        cmd.env("PGSSLMODE", if self.ssl { "require" } else { "disable" });
        cmd
    }

    /// Runs `psql -c SQL` and returns its output (panics on failure).
    #[must_use]
    pub fn psql(&self, sql: &str) -> Output {
        let out = self
            .client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, "postgres"])
            .output();
        let out = out.unwrap_or_else(|e| panic!("running psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// A self-signed certificate and its key in `dir`, readable by postgres
/// only (the server refuses a key others can read).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("running openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap_or_default();
    let status = Command::new("chown")
        .arg("postgres")
        .arg(&cert)
        .arg(&key)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "chown postgres {}",
        key.display()
    );
    (cert, key)
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
