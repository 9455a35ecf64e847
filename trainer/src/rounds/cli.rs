//! `rlhf round start|status|list|cancel`: queue and inspect alignment rounds.
use super::config::{defaults, Recipe, RoundConfig, StageSettings};
use super::series::{absolute, check_policy, series};
use annotation_server::api::client::Client;
use annotation_server::api::{NewRound, Round, RoundStatus, RoundUpdate};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the annotation server is.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The annotation server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "RLHF_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A researcher (or admin) API token (`rlhf token create`).
    #[arg(long, env = "RLHF_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// `rlhf round ...`.
#[derive(Args, Debug)]
pub struct RoundArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: RoundCommand,
}

/// Round subcommands.
#[derive(Subcommand, Debug)]
pub enum RoundCommand {
    /// Queue a round for a worker.
    Start(Box<StartArgs>),
    /// Show one round (status, progress, metrics) as JSON.
    Status { id: i64 },
    /// List rounds.
    List,
    /// Cancel a round (any status but done); its worker stops at its next heartbeat.
    Cancel {
        id: i64,
        /// Why (kept in the server's audit log).
        #[arg(long)]
        reason: String,
    },
}

/// `rlhf round start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    #[arg(long, value_enum)]
    pub recipe: Recipe,
    /// Starting policy [the output of the last finished round of the same prompt source].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Server prompts with this source are the pool rounds draw from.
    #[arg(long)]
    pub prompt_source: String,
    /// Prompts are plain text (else chat messages through the chat template).
    #[arg(long)]
    pub text_prompts: bool,
    /// A built-in task with a gold reward for evaluation (review, arithmetic).
    #[arg(long)]
    pub task: Option<String>,
    /// Where round outputs go (a folder per round is made inside).
    #[arg(long, default_value = defaults::WORKDIR)]
    pub workdir: PathBuf,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = defaults::PROMPTS_PER_ROUND)]
    pub prompts_per_round: usize,
    /// Responses per prompt (one comparison of K).
    #[arg(long, default_value_t = defaults::K)]
    pub k: usize,
    #[arg(long, default_value_t = defaults::LABELS_WANTED)]
    pub labels_wanted: u32,
    #[arg(long, default_value_t = defaults::TEMPERATURE)]
    pub temperature: f32,
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Learning rates / steps of the stages (default: the CLI defaults).
    #[arg(long)]
    pub rm_lr: Option<f32>,
    #[arg(long)]
    pub rm_steps: Option<u64>,
    #[arg(long)]
    pub policy_lr: Option<f32>,
    #[arg(long)]
    pub policy_steps: Option<u64>,
}

/// Runs `rlhf round ...`.
pub fn run_round(a: RoundArgs) -> Result<()> {
    let client = Client::new(&a.server.server, &a.server.token)?;
    match a.command {
        RoundCommand::Start(s) => {
            let r = start(&client, &s)?;
            eprintln!(
                "queued round {} ({}); a worker (`rlhf worker`) will run it",
                r.id, r.name
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        RoundCommand::Status { id } => {
            println!("{}", serde_json::to_string_pretty(&client.round(id)?)?)
        }
        RoundCommand::Cancel { id, reason } => {
            let r = client.update_round(
                id,
                &RoundUpdate {
                    status: Some(RoundStatus::Cancelled.into()),
                    reason: Some(reason),
                    metrics: None,
                },
            )?;
            eprintln!("cancelled round {} ({})", r.id, r.name);
        }
        RoundCommand::List => {
            for r in client.rounds()? {
                let m = r.metrics_typed();
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.name,
                    r.status,
                    m.progress.map(|p| p.step).unwrap_or_default(),
                    serde_json::to_string(&m.summary)?
                );
            }
        }
    }
    Ok(())
}

/// Queues a round made by [`round_config`].
pub fn start(client: &Client, s: &StartArgs) -> Result<Round> {
    let (name, cfg) = round_config(client, s)?;
    queue(client, &name, &cfg)
}

/// Queues a round with this configuration.
pub fn queue(client: &Client, name: &str, cfg: &RoundConfig) -> Result<Round> {
    client.create_round(&NewRound {
        name: name.to_string(),
        config: Some(serde_json::to_value(cfg)?),
        status: Some(RoundStatus::Queued.into()),
    })
}

/// A round's name and configuration: it records the starting policy (default:
/// the last finished round's output of the same prompt source) and the series' first policy.
pub fn round_config(client: &Client, s: &StartArgs) -> Result<(String, RoundConfig)> {
    if let Some(t) = &s.task {
        super::tasks::task(t)?;
    }
    let series = series(client, &s.prompt_source, None)?;
    let policy = match (&s.policy, series.last_output) {
        (Some(p), _) => absolute(p)?,
        (None, Some(p)) => p,
        (None, None) => bail!(
            "--policy is needed for the first round of prompt source `{}`",
            s.prompt_source
        ),
    };
    check_policy(&policy)?;
    let initial = series.initial.unwrap_or_else(|| policy.clone());
    let index = series.len + 1;
    let name = s
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{index}", s.prompt_source));
    let workdir = absolute(&s.workdir)?.join(&name);
    let cfg = RoundConfig {
        recipe: s.recipe,
        task: s.task.clone(),
        policy,
        initial_policy: initial,
        workdir,
        prompt_source: s.prompt_source.clone(),
        prompt_format: if s.text_prompts {
            "text".into()
        } else {
            "chat".into()
        },
        index,
        prompts_per_round: s.prompts_per_round,
        k: s.k,
        labels_wanted: s.labels_wanted,
        temperature: s.temperature,
        max_new_tokens: s.max_new_tokens,
        seed: s.seed,
        eval_prompts: defaults::EVAL_PROMPTS,
        rm: StageSettings {
            lr: s.rm_lr,
            steps: s.rm_steps,
            ..StageSettings::default()
        },
        rs: StageSettings {
            lr: s.policy_lr,
            steps: s.policy_steps,
            ..StageSettings::default()
        },
        dpo: StageSettings {
            lr: s.policy_lr,
            steps: s.policy_steps,
            ..StageSettings::default()
        },
        ppo: StageSettings {
            lr: s.policy_lr,
            steps: s.policy_steps,
            ..StageSettings::default()
        },
    };
    Ok((name, cfg))
}
