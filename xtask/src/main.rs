//! `cargo xtask`: set-up, build, run, test and bench for qprof.
//!
//! Everything a fresh machine needs is installed here, idempotently, so that
//! the README's two commands (`cargo xtask run -- ...`, `cargo xtask test`)
//! work from a clean clone.

mod bench;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "qprof's set-up, build, run, test and bench commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the BPF programs needs (rust-src for the
    /// nightly, bpf-linker against the nightly's LLVM) and check the kernel.
    Setup,
    /// Set up, build qprof (release) and run it with the given arguments.
    Run {
        /// Arguments for qprof, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, lint (rustfmt, clippy -D warnings), install the test
    /// dependencies, run every test (unit and privileged end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check formatting (`cargo fmt --check`) and clippy (`-D warnings`),
    /// as `test` does before the tests.
    Lint,
    /// Run a benchmark against its peer and print the ratios.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Run { args } => run::run(&args),
        Command::Test { args } => test::run(&args),
        Command::Lint => test::lint(),
        Command::Bench { which } => bench::run(&which),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
