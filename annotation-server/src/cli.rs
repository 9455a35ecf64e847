//! `rlhf serve`, `rlhf db`, `rlhf user`, `rlhf token`.
use clap::Subcommand;

/// Commands that the annotation server owns.
#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Run the annotation server (labeler UI + REST API).
    Serve,
}

/// Runs one of the server's commands.
pub fn run(cmd: Commands) -> anyhow::Result<()> {
    match cmd {
        Commands::Serve => anyhow::bail!("the annotation server is not built yet"),
    }
}
