//! `rlhf worker` (claims queued rounds from the server and runs them) and
//! `rlhf round start|status|list`.
use crate::lease;
use crate::round::{self, Ctx, Recipe, RoundConfig, StageSettings, WorkerDefaults};
use annotation_server::api::client::Client;
use annotation_server::api::{NewRound, Round, RoundClaim, RoundUpdate};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use policy::cli::{DeviceKind, OnDevice};
use policy::model::Dev;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// `rlhf worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// This worker's name (the lease owner). Restarted with the same name and
    /// `--workdir` (which keeps the lease's token), a worker continues the
    /// round it was running.
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a claimed round stays ours without a heartbeat.
    #[arg(long, default_value_t = 300)]
    pub lease_seconds: u64,
    /// Seconds between polls when no round is queued.
    #[arg(long, default_value_t = 5)]
    pub poll_seconds: u64,
    /// Run at most one round, then exit (with nothing queued: exit at once).
    #[arg(long)]
    pub once: bool,
    /// Starting policy for a series' first round when the round names none
    /// (rounds queued on the dashboard). Later rounds start from the last
    /// finished round's output of the same prompt source.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Where rounds queued without a work directory put their files (a folder `round-<id>` each).
    #[arg(long, default_value = "rlhf-rounds")]
    pub workdir: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long)]
    pub quiet: bool,
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
    #[arg(long, default_value = "rlhf-rounds")]
    pub workdir: PathBuf,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub prompts_per_round: usize,
    /// Responses per prompt (one comparison of K).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    #[arg(long, default_value_t = 1)]
    pub labels_wanted: u32,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 64)]
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

impl OnDevice for WorkerArgs {
    fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
        worker(&self, dev)
    }
}

/// Runs `rlhf worker`.
pub fn run_worker(a: WorkerArgs) -> Result<()> {
    a.device.dispatch(a)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "worker@{}",
        if host.is_empty() { "localhost" } else { &host }
    )
}

/// Claims the next round for this worker: first one it already holds (a
/// restart; its lease token is kept in the workdir, see [`crate::lease`]),
/// then a queued or abandoned one. The returned round carries its lease token.
pub fn claim(ctx: &Ctx) -> Result<Option<Round>> {
    let workdir = &ctx.defaults.workdir;
    for r in
        ctx.client.rounds()?.into_iter().filter(|r| {
            r.status == "running" && r.lease_owner.as_deref() == Some(ctx.worker.as_str())
        })
    {
        match lease::load(workdir, &ctx.server, &ctx.worker, r.id) {
            Some(token) => {
                return Ok(Some(Round {
                    lease_token: Some(token),
                    ..r
                }))
            }
            None => eprintln!(
                "round {} runs under the name `{}` but its lease token is not in {}; it can be claimed again when the lease expires ({})",
                r.id,
                ctx.worker,
                workdir.join(".leases").display(),
                r.lease_expires_at.as_deref().unwrap_or("?")
            ),
        }
    }
    let r = ctx.client.claim_round(&RoundClaim {
        worker: ctx.worker.clone(),
        lease_seconds: Some(ctx.lease_seconds),
    })?;
    if let Some(r) = &r {
        let token = r
            .lease_token
            .as_deref()
            .context("the server's claim carried no lease token")?;
        lease::save(workdir, &ctx.server, &ctx.worker, r.id, token)?;
    }
    Ok(r)
}

fn worker<D: Dev>(a: &WorkerArgs, dev: &D) -> Result<()> {
    let name = a.name.clone().unwrap_or_else(default_name);
    let mut ctx = Ctx::new(
        &a.server.server,
        &a.server.token,
        &name,
        a.lease_seconds,
        a.device,
        a.quiet,
    )?;
    ctx.defaults = WorkerDefaults {
        policy: a.policy.as_deref().map(absolute).transpose()?,
        workdir: absolute(&a.workdir)?,
        ..WorkerDefaults::default()
    };
    policy::train_loop::install_interrupt_handler();
    eprintln!("worker {name} polling {}", a.server.server);
    loop {
        if policy::train_loop::interrupted() {
            return Ok(());
        }
        match claim(&ctx)? {
            Some(r) => {
                eprintln!("running round {} ({})", r.id, r.name);
                match round::run(&ctx, &r, dev) {
                    Ok(state) => eprintln!(
                        "round {} done: {}",
                        r.id,
                        state
                            .output
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                    Err(e) if policy::train_loop::interrupted() => {
                        eprintln!(
                            "round {} interrupted ({e:#}); run the worker again to continue it",
                            r.id
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        // the round stays `running` under our lease: a restart retries it
                        eprintln!("round {} failed: {e:#}", r.id);
                        return Err(e);
                    }
                }
                if a.once {
                    return Ok(());
                }
            }
            None if a.once => return Ok(()),
            None => std::thread::sleep(Duration::from_secs(a.poll_seconds.max(1))),
        }
    }
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
                    status: Some("cancelled".into()),
                    reason: Some(reason),
                    metrics: None,
                },
            )?;
            eprintln!("cancelled round {} ({})", r.id, r.name);
        }
        RoundCommand::List => {
            for r in client.rounds()? {
                let step = r
                    .metrics
                    .pointer("/progress/step")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.name,
                    r.status,
                    step,
                    r.metrics
                        .get("summary")
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
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
        status: Some("queued".into()),
    })
}

/// A round's prompt source: from the configuration its worker completed, else as queued.
pub fn source_of(r: &Round) -> Option<String> {
    let completed = r.state.pointer("/config/prompt_source");
    completed
        .or_else(|| r.config.get("prompt_source"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn path_at(v: &serde_json::Value, pointer: &str) -> Option<PathBuf> {
    v.pointer(pointer)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Where a series of rounds (those of one prompt source, before round `before`) stands.
struct Series {
    /// The output of its last finished round.
    last_output: Option<PathBuf>,
    /// The policy its first round started from.
    initial: Option<PathBuf>,
    /// How many rounds it has.
    len: u64,
}

fn series(client: &Client, source: &str, before: Option<i64>) -> Result<Series> {
    let rounds: Vec<Round> = client
        .rounds()?
        .into_iter()
        .filter(|r| source_of(r).as_deref() == Some(source) && before.is_none_or(|b| r.id < b))
        .collect();
    let last_done = rounds
        .iter()
        .filter(|r| r.status == "done")
        .max_by_key(|r| r.id);
    let last_output = match last_done {
        Some(r) => Some(
            path_at(&r.state, "/output")
                .with_context(|| format!("round {} is done but has no output", r.id))?,
        ),
        None => None,
    };
    let initial = rounds.iter().min_by_key(|r| r.id).and_then(|r| {
        path_at(&r.state, "/config/initial_policy")
            .or_else(|| path_at(&r.config, "/initial_policy"))
    });
    Ok(Series {
        last_output,
        initial,
        len: rounds.len() as u64,
    })
}

fn check_policy(p: &Path) -> Result<()> {
    if !p.join("config.json").is_file() {
        bail!(
            "{} is not a policy checkpoint (no config.json)",
            p.display()
        );
    }
    Ok(())
}

/// Completes the configuration of a round queued without some settings (the
/// dashboard form leaves out paths): keys missing from `round.config` come
/// from the worker's defaults; the prompt source defaults to the task's
/// built-in prompts (imported if the server lacks them); the starting policy
/// to the last finished round's output of the same prompt source, else the
/// worker's `--policy`; the work directory to `WORKDIR/round-<id>`.
pub fn complete_config(
    client: &Client,
    round: &Round,
    defaults: &WorkerDefaults,
) -> Result<RoundConfig> {
    let mut v = defaults.config.clone();
    match &round.config {
        serde_json::Value::Object(m) => v.extend(m.clone()),
        serde_json::Value::Null => {}
        _ => bail!("round {}: its config is not a JSON object", round.id),
    }
    let mut cfg: RoundConfig = serde_json::from_value(serde_json::Value::Object(v))
        .with_context(|| format!("round {}: bad config", round.id))?;
    if cfg.prompt_source.is_empty() {
        let name = cfg.task.as_deref().with_context(|| {
            format!(
                "round {}: neither a prompt source nor a task is set",
                round.id
            )
        })?;
        let task = crate::tasks::task(name)?;
        cfg.prompt_format = "text".into();
        cfg.prompt_source = crate::tasks::ensure_prompts(client, task.as_ref(), 4096)?;
    }
    let series = series(client, &cfg.prompt_source, Some(round.id))?;
    if cfg.policy.as_os_str().is_empty() {
        cfg.policy = series.last_output.clone().or_else(|| defaults.policy.clone()).with_context(|| {
            format!("round {}: no starting policy; the first round of prompt source `{}` needs one (queue it with a policy, or start the worker with --policy)", round.id, cfg.prompt_source)
        })?;
    }
    check_policy(&cfg.policy)?;
    if cfg.initial_policy.as_os_str().is_empty() {
        cfg.initial_policy = series.initial.unwrap_or_else(|| cfg.policy.clone());
    }
    if cfg.index == 0 {
        cfg.index = series.len + 1;
    }
    if cfg.workdir.as_os_str().is_empty() {
        cfg.workdir = defaults.workdir.join(format!("round-{}", round.id));
    }
    Ok(cfg)
}

/// A round's name and configuration: it records the starting policy (default:
/// the last finished round's output of the same prompt source) and the series' first policy.
pub fn round_config(client: &Client, s: &StartArgs) -> Result<(String, RoundConfig)> {
    if let Some(t) = &s.task {
        crate::tasks::task(t)?;
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
        eval_prompts: 64,
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
