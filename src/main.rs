//! `rlhf`: one CLI for every service of the pipeline.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "RLHF alignment pipeline for Llama models")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    #[command(flatten)]
    Server(annotation_server::cli::Commands),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Server(c) => annotation_server::cli::run(c),
    }
}
