//! `qprof`: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = qprof::cli::Cli::parse();
    match qprof::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("qprof: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
