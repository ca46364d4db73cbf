//! `qprof agent`: the daemon's command line; the daemon is `crate::daemon`.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::daemon::{self, Overrides};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML config file; without one the embedded defaults run (see
    /// `--print-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP address (default 127.0.0.1:9876). A non-loopback address needs
    /// an auth token.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where windows and captures are kept (default /var/lib/qprof).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the bearer token the API requires.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Print the effective config (file, defaults and these flags) and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        config_file: args.config.clone(),
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        auth_token_file: args.auth_token_file.clone(),
    };
    if args.print_config {
        print!("{}", daemon::effective_config(&overrides)?.to_toml());
        return Ok(());
    }
    daemon::run(&overrides)
}
