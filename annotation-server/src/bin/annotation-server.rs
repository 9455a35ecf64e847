//! The annotation server's commands on their own (`serve`, `db migrate`,
//! `user ...`, `token ...`), exactly as `rlhf` runs them: for hosts that need
//! no training stack, and for the tests that run several server processes.
use clap::Parser;

/// `annotation-server <command>`: the same commands as `rlhf <command>`.
#[derive(Parser)]
#[command(name = "annotation-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: annotation_server::cli::Commands,
}

fn main() -> anyhow::Result<()> {
    annotation_server::cli::run(Cli::parse().command)
}
