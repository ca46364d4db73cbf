//! `cargo xtask test`: set-up, lint (rustfmt and clippy), test
//! dependencies, then every test. `cargo xtask lint` runs the lint alone.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{self, on_path, run_cmd},
};

/// Debian packages the tests use, each with the program that proves it is
/// installed: the reference tools qprof's output is checked against.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("golang-go", "go"), // `go tool pprof` reads every profile qprof writes
    ("linux-perf", "perf"),
    ("gcc", "gcc"),                 // builds the fixture programs with frame pointers
    ("strace", "strace"),           // the reference for syscall counts
    ("util-linux", "setpriv"),      // runs qprof without privileges in a bad-input test
    ("iproute2", "ss"),             // `ss -ti` RTTs and `ip netns` for the TCP tests
    ("nftables", "nft"),            // drops packets in a test namespace: real retransmits
    ("prometheus", "promtool"),     // `promtool check metrics` on the agent's /metrics
    ("bpftool", "bpftool"),         // proves the agent's programs are gone after it stops
    ("openssl", "openssl"),         // self-signed certificates for the TLS query tests
    ("systemd", "systemd-analyze"), // `systemd-analyze verify` on the unit file
    // The reference OpenMetrics parser (promtool 2.42 reads only text 0.0.4).
    (
        "python3-prometheus-client",
        "/usr/lib/python3/dist-packages/prometheus_client/__init__.py",
    ),
    ("postgresql", "pg_ctlcluster"), // a real server for the query tests (pgbench, psql)
    ("sqlite3", "sqlite3"),          // the sqlite3 CLI (links libsqlite3)
    ("libpq-dev", "pg_config"),      // builds the libpq client fixtures
    ("python3", "python3"),          // its sqlite3 module links the system libsqlite3
    // A header, not a program: an absolute path is checked as it is. The
    // SQLite fixtures are built against libsqlite3 and its static archive.
    ("libsqlite3-dev", "/usr/include/sqlite3.h"),
];

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("the end-to-end tests load BPF programs: run as root (sudo -E cargo xtask test)");
    }
    setup::ensure_build_tools()?;
    setup::check_kernel();
    lint_checks()?;
    install_test_packages()?;
    let qprof = util::build_qprof()?;
    let root = util::workspace_root();
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(&root)
        // Default members only: the BPF crate cannot build for the host.
        .args(["test", "--no-fail-fast"])
        .args(args)
        .env("QPROF_BIN", &qprof);
    run_cmd(&mut cmd)?;
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask lint`: the house style as CI enforces it, without the tests.
pub fn lint() -> anyhow::Result<ExitCode> {
    // clippy builds the agent, whose build script builds the BPF programs.
    setup::ensure_build_tools()?;
    lint_checks()?;
    eprintln!("lint: rustfmt and clippy are clean");
    Ok(ExitCode::SUCCESS)
}

/// rustfmt (check only, naming the files that differ) then clippy with
/// every warning an error, on the default members: the BPF crate builds
/// for bpfel-unknown-none only and is linted through the agent's build.
fn lint_checks() -> anyhow::Result<()> {
    let root = util::workspace_root();
    eprintln!("lint: cargo fmt --all --check");
    let fmt = Command::new(util::cargo())
        .current_dir(&root)
        .args(["fmt", "--all", "--check", "--", "--files-with-diff"])
        .status()
        .context("starting cargo fmt (rustup component add rustfmt)")?;
    if !fmt.success() {
        bail!(
            "the files listed above are not formatted as rustfmt.toml says: run `cargo fmt --all` and commit the result"
        );
    }
    eprintln!("lint: cargo clippy --all-targets -- -D warnings");
    let clippy = Command::new(util::cargo())
        .current_dir(&root)
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .status()
        .context("starting cargo clippy (rustup component add clippy)")?;
    if !clippy.success() {
        bail!(
            "clippy found the problems above (pedantic is on; every allowed lint needs a reason): fix them, or run `cargo xtask lint` to see them alone"
        );
    }
    Ok(())
}

/// apt-get only what is missing; nothing at all when everything is there.
pub fn install_test_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(_, prog)| !on_path(prog))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("test: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
