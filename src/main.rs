//! `rlhf`: one CLI for every service of the pipeline.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "RLHF alignment pipeline for Llama models: annotation server, policy, reward model, trainer")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Create, inspect and run Llama checkpoints (Hugging Face directories).
    Policy(policy::cli::PolicyArgs),
    /// Train, evaluate and score reward models (HF LlamaForSequenceClassification directories).
    Rm(reward_model::cli::RmArgs),
    #[command(flatten)]
    Server(annotation_server::cli::Commands),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Policy(c) => policy::cli::run(c),
        Commands::Rm(c) => reward_model::cli::run(c),
        Commands::Server(c) => annotation_server::cli::run(c),
    };
    if let Err(e) = result {
        // `rlhf … | head` closing the pipe early is not a failure.
        if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
