//! `cargo xtask test`: set-up, test dependencies, then every test.

use std::process::{Command, ExitCode};

use anyhow::bail;

use crate::{
    setup,
    util::{self, on_path, run_cmd},
};

/// Debian packages the tests use, each with the program that proves it is
/// installed: the reference tools qprof's output is checked against.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("golang-go", "go"), // `go tool pprof` reads every profile qprof writes
    ("linux-perf", "perf"),
    ("gcc", "gcc"),                  // builds the fixture programs with frame pointers
    ("strace", "strace"),            // the reference for syscall counts
    ("util-linux", "setpriv"),       // runs qprof without privileges in a bad-input test
    ("iproute2", "ss"),              // `ss -ti` RTTs and `ip netns` for the TCP tests
    ("nftables", "nft"),             // drops packets in a test namespace: real retransmits
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
