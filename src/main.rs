//! `rlhf`: one CLI for every service of the pipeline.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rlhf",
    version,
    about = "RLHF alignment pipeline for Llama models: annotation server, policy, reward model, trainer"
)]
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
    /// Supervised fine-tuning on prompt/completion, chat or text data (loss on responses only).
    Sft(Box<trainer::cli::SftArgs>),
    /// Rejection sampling: K samples per prompt, keep the best by reward, fine-tune on them.
    Rs(Box<trainer::cli::RsArgs>),
    /// Direct preference optimization (sigmoid/cDPO, robust, IPO, RPO) on preference pairs.
    Dpo(Box<trainer::cli::DpoArgs>),
    /// PPO against a reward model, Llama-2's safety + helpfulness reward, or a reward function.
    Ppo(Box<trainer::cli::PpoArgs>),
    /// Simulated labelers: bots that rank responses by a demo task's gold reward, through the annotation server's API.
    Label(trainer::rounds::labelers::LabelArgs),
    /// The whole loop on an embedded default: server, demo policy, rounds with simulated labelers.
    Demo(Box<trainer::rounds::demo::DemoArgs>),
    /// Claim queued alignment rounds from the annotation server and run them.
    Worker(Box<trainer::rounds::worker::WorkerArgs>),
    /// Queue, inspect and list alignment rounds.
    Round(Box<trainer::rounds::cli::RoundArgs>),
    /// Evaluate a policy: gold reward, reward-model score, KL to a reference, win rate.
    Eval(Box<trainer::rounds::eval::EvalArgs>),
    /// Export a round's aligned policy as a Hugging Face directory with a model card.
    Export(Box<trainer::rounds::export::ExportArgs>),
    #[command(flatten)]
    Server(annotation_server::cli::Commands),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Policy(c) => policy::cli::run(c),
        Commands::Rm(c) => reward_model::cli::run(c),
        Commands::Sft(a) => trainer::cli::run_sft(*a),
        Commands::Rs(a) => trainer::cli::run_rs(*a),
        Commands::Dpo(a) => trainer::cli::run_dpo(*a),
        Commands::Ppo(a) => trainer::cli::run_ppo(*a),
        Commands::Label(a) => trainer::rounds::labelers::run(a),
        Commands::Demo(a) => trainer::rounds::demo::run(*a),
        Commands::Worker(a) => trainer::rounds::worker::run_worker(*a),
        Commands::Round(a) => trainer::rounds::cli::run_round(*a),
        Commands::Eval(a) => trainer::rounds::eval::run_eval(*a),
        Commands::Export(a) => trainer::rounds::export::run_export(*a),
        Commands::Server(c) => annotation_server::cli::run(c),
    };
    if let Err(e) = result {
        // `rlhf … | head` closing the pipe early is not a failure.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            return;
        }
        eprintln!("error: {e:#}");
        let interrupted = e.chain().any(|c| {
            c.downcast_ref::<policy::train_loop::Interrupted>()
                .is_some()
        });
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}
