//! One alignment round, run by a worker that holds the round's lease on the
//! annotation server: (a) sample K responses per prompt from the round's
//! starting policy, (b) push them as comparisons, (c) wait for the labels,
//! (d) retrain the reward model on all preference data so far, (e) improve
//! the policy with the recipe (`rs`, `dpo`, `ppo`, `rs+ppo`, `rs+dpo`), (f)
//! evaluate, (g) record the output checkpoint.
//!
//! Every step is idempotent and its progress lives in the round's `state` on
//! the server (and in files under the round's work directory): a worker that
//! is killed at any point and restarted continues where it stopped. Samples
//! are written before comparisons are created; comparisons go into the batch
//! `round-<id>`, which is looked up before creating it, so a retry never
//! duplicates them; training stages resume from their checkpoints.
use crate::cli::{DpoArgs, LoopArgs, PpoArgs, PpoPreset, RewardArgs, RsArgs, RunArgs};
use crate::data::Prompt;
use crate::eval::{evaluate, EvalReport, EvalSetup};
use crate::reward::Reward;
use annotation_server::api::client::Client;
use annotation_server::api::{
    CreateComparisons, ExportQuery, NewComparison, NewResponse, Round, RoundHeartbeat,
};
use anyhow::{bail, Context, Result};
use clap::Parser;
use policy::checkpoint::Checkpoint;
use policy::cli::{stop_tokens, DeviceKind};
use policy::generate::{generate, SamplingConfig};
use policy::model::Dev;
use policy::tokenizer::Tokenizer;
use reward_model::data::{Content, DataOptions, Pair};
use reward_model::model::RewardModel;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the policy is improved in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Recipe {
    #[serde(rename = "rs")]
    #[value(name = "rs")]
    Rs,
    #[serde(rename = "dpo")]
    #[value(name = "dpo")]
    Dpo,
    #[serde(rename = "ppo")]
    #[value(name = "ppo")]
    Ppo,
    /// Rejection sampling, then PPO from its output (Llama-2).
    #[serde(rename = "rs+ppo")]
    #[value(name = "rs+ppo")]
    RsPpo,
    /// Rejection sampling, then DPO from its output (Llama-3).
    #[serde(rename = "rs+dpo")]
    #[value(name = "rs+dpo")]
    RsDpo,
}

impl Recipe {
    /// The name used in configs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Rs => "rs",
            Recipe::Dpo => "dpo",
            Recipe::Ppo => "ppo",
            Recipe::RsPpo => "rs+ppo",
            Recipe::RsDpo => "rs+dpo",
        }
    }
}

fn d_prompts() -> usize {
    32
}
fn d_k() -> usize {
    4
}
fn d_one() -> u32 {
    1
}
fn d_temp() -> f32 {
    1.0
}
fn d_tokens() -> usize {
    64
}
fn d_text() -> String {
    "chat".into()
}
fn d_eval() -> usize {
    64
}

/// Training settings of a round's stages (defaults: the CLI's).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageSettings {
    pub lr: Option<f32>,
    pub steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub epochs: Option<f32>,
}

/// A round's configuration (the round's `config` on the server).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundConfig {
    pub recipe: Recipe,
    /// A built-in task with a gold reward (`review`, `arithmetic`), for evaluation.
    #[serde(default)]
    pub task: Option<String>,
    /// The round's starting policy (left out: the worker fills it, see [`crate::worker::complete_config`]).
    #[serde(default)]
    pub policy: PathBuf,
    /// The series' first policy: reference for KL and the reward model's initialization.
    #[serde(default)]
    pub initial_policy: PathBuf,
    /// Where the round's files go.
    #[serde(default)]
    pub workdir: PathBuf,
    /// Server prompts with this `source` are the pool the round draws from.
    #[serde(default)]
    pub prompt_source: String,
    /// `text`: prompts are plain text (a single user message on the server is its text); `chat`: chat template.
    #[serde(default = "d_text")]
    pub prompt_format: String,
    /// 1-based position of the round in its series (which slice of the pool it takes).
    #[serde(default)]
    pub index: u64,
    #[serde(default = "d_prompts")]
    pub prompts_per_round: usize,
    /// Responses per prompt (one comparison of K responses each).
    #[serde(default = "d_k")]
    pub k: usize,
    #[serde(default = "d_one")]
    pub labels_wanted: u32,
    #[serde(default = "d_temp")]
    pub temperature: f32,
    #[serde(default = "d_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub seed: u64,
    /// Held-out prompts for evaluation (from the task).
    #[serde(default = "d_eval")]
    pub eval_prompts: usize,
    #[serde(default)]
    pub rm: StageSettings,
    #[serde(default)]
    pub rs: StageSettings,
    #[serde(default)]
    pub dpo: StageSettings,
    #[serde(default)]
    pub ppo: StageSettings,
}

/// Where a round is (the round's `state` on the server).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundState {
    /// The configuration the worker completed and ran (fixed at the round's first step).
    #[serde(default)]
    pub config: Option<RoundConfig>,
    /// The batch of this round's comparisons, once created.
    pub batch_id: Option<i64>,
    /// Held-out accuracy of the round's reward model.
    pub rm_accuracy: Option<f64>,
    /// The round's output checkpoint, once trained.
    pub output: Option<PathBuf>,
    pub eval: Option<EvalReport>,
}

/// What a worker fills into rounds queued without it (e.g. from the dashboard form).
#[derive(Clone, Debug, Default)]
pub struct WorkerDefaults {
    /// Starting policy of a series' first round.
    pub policy: Option<PathBuf>,
    /// Each round gets the folder `round-<id>` in here.
    pub workdir: PathBuf,
    /// Config keys (stage settings, sampling, ...) for rounds that lack them.
    pub config: serde_json::Map<String, Value>,
}

/// The connection of a worker to the server.
pub struct Ctx {
    pub server: String,
    pub token: String,
    pub client: Client,
    pub worker: String,
    pub lease_seconds: u64,
    pub device: DeviceKind,
    pub quiet: bool,
    /// What this worker fills into rounds queued without it.
    pub defaults: WorkerDefaults,
    /// The round running now and its lease token.
    lease: std::sync::Mutex<Option<(i64, String)>>,
    /// The last progress report, re-sent in the background to keep the lease.
    pub last: std::sync::Mutex<Option<(i64, RoundHeartbeat)>>,
}

impl Ctx {
    /// A worker context.
    pub fn new(
        server: &str,
        token: &str,
        worker: &str,
        lease_seconds: u64,
        device: DeviceKind,
        quiet: bool,
    ) -> Result<Self> {
        Ok(Ctx {
            server: server.to_string(),
            token: token.to_string(),
            client: Client::new(server, token)?,
            worker: worker.to_string(),
            lease_seconds,
            device,
            quiet,
            defaults: WorkerDefaults::default(),
            lease: std::sync::Mutex::new(None),
            last: std::sync::Mutex::new(None),
        })
    }

    /// Reports progress and state; fails when the lease was lost.
    fn beat(
        &self,
        round: i64,
        status: Option<&str>,
        state: &RoundState,
        metrics: &Value,
    ) -> Result<()> {
        let lease_token = match &*self.lease.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((id, token)) if *id == round => token.clone(),
            _ => bail!("round {round}: this worker holds no lease on it"),
        };
        let hb = RoundHeartbeat {
            worker: self.worker.clone(),
            lease_token,
            lease_seconds: Some(self.lease_seconds),
            status: status.map(str::to_string),
            state: Some(serde_json::to_value(state)?),
            metrics: Some(metrics.clone()),
        };
        self.client
            .heartbeat_round(round, &hb)
            .with_context(|| format!("round {round}: cannot report progress"))?;
        // the background beat only extends the lease; it never re-sends a final status
        let keep = RoundHeartbeat { status: None, ..hb };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = if status.is_some() {
            None
        } else {
            Some((round, keep))
        };
        Ok(())
    }
}

/// Runs (or continues) `round` on `dev`, keeping its lease alive in the background.
pub fn run<D: Dev>(ctx: &Ctx, round: &Round, dev: &D) -> Result<RoundState> {
    let token = round
        .lease_token
        .clone()
        .with_context(|| format!("round {}: no lease token (claim the round first)", round.id))?;
    *ctx.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((round.id, token));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let every = Duration::from_secs((ctx.lease_seconds / 3).clamp(1, 30));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut since = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if since.elapsed() < every {
                    continue;
                }
                since = Instant::now();
                let last = ctx.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some((id, hb)) = last {
                    if let Err(e) = ctx.client.heartbeat_round(id, &hb) {
                        eprintln!("round {id}: lease heartbeat failed: {e:#}");
                    }
                }
            }
        });
        let r = run_steps(ctx, round, dev);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        *ctx.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *ctx.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if r.is_ok() {
            // the final heartbeat released the lease
            crate::lease::forget(&ctx.defaults.workdir, round.id);
        }
        r
    })
}

fn metrics_json(
    step: &str,
    detail: &str,
    summary: &BTreeMap<String, f64>,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
) -> Value {
    json!({"progress": {"step": step, "detail": detail}, "summary": summary, "series": series})
}

/// Whether a training output directory holds a finished run.
pub fn finished(dir: &Path) -> bool {
    policy::train_state::steps(dir).is_some_and(|(step, total)| step >= total)
}

/// Default training-loop flags (clap's defaults).
fn loop_args(s: &StageSettings, seed: u64, quiet: bool) -> LoopArgs {
    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        l: LoopArgs,
    }
    let mut l = W::parse_from(["loop"]).l;
    l.lr = s.lr;
    l.max_steps = s.steps;
    l.batch_size = s.batch_size;
    l.epochs = s.epochs;
    l.seed = seed;
    l.quiet = quiet;
    l.log_every = Some(1);
    l
}

fn reward_args(rm: &Path) -> RewardArgs {
    RewardArgs {
        reward_model: Some(rm.to_path_buf()),
        safety_model: None,
        helpfulness_model: None,
        reward_fn: None,
        score_batch: 32,
    }
}

/// The round's prompts, as sampled (in its work directory).
const PROMPTS_FILE: &str = "prompts.jsonl";

/// The server's prompts with this `source`, by id.
pub fn source_prompts(
    client: &Client,
    source: &str,
) -> Result<Vec<annotation_server::api::Prompt>> {
    let mut pool = vec![];
    let mut after = 0;
    loop {
        let page = client.prompts(after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        pool.extend(
            page.into_iter()
                .filter(|p| p.source.as_deref() == Some(source)),
        );
    }
    Ok(pool)
}

/// The round's prompts: a window of the pool, moving by `prompts_per_round` each round.
fn pick_prompts(client: &Client, cfg: &RoundConfig) -> Result<Vec<annotation_server::api::Prompt>> {
    let pool = source_prompts(client, &cfg.prompt_source)?;
    if pool.is_empty() {
        bail!(
            "the server has no prompts with source `{}`",
            cfg.prompt_source
        );
    }
    let start = (cfg.index.saturating_sub(1) as usize * cfg.prompts_per_round) % pool.len();
    Ok((0..cfg.prompts_per_round.min(pool.len()))
        .map(|i| pool[(start + i) % pool.len()].clone())
        .collect())
}

fn content_of(cfg: &RoundConfig, messages: &[annotation_server::api::ChatMessage]) -> Content {
    if cfg.prompt_format == "text" && messages.len() == 1 && messages[0].role == "user" {
        Content::Text(messages[0].content.clone())
    } else {
        Content::Chat(
            messages
                .iter()
                .map(|m| policy::chat::Message::new(m.role.clone(), m.content.clone()))
                .collect(),
        )
    }
}

fn as_text_pairs(cfg: &RoundConfig, pairs: Vec<Pair>) -> Vec<Pair> {
    // the export gives chat messages; a text task trains on the plain text
    pairs
        .into_iter()
        .map(|mut p| {
            if let Content::Chat(m) = &p.prompt {
                if cfg.prompt_format == "text" && m.len() == 1 && m[0].role == "user" {
                    p.prompt = Content::Text(m[0].content.clone());
                }
            }
            p
        })
        .collect()
}

fn run_steps<D: Dev>(ctx: &Ctx, round: &Round, dev: &D) -> Result<RoundState> {
    let mut state: RoundState = serde_json::from_value(round.state.clone()).unwrap_or_default();
    let mut summary: BTreeMap<String, f64> = BTreeMap::new();
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let cfg = match &state.config {
        Some(c) => c.clone(),
        None => {
            let c = crate::worker::complete_config(&ctx.client, round, &ctx.defaults)?;
            state.config = Some(c.clone());
            ctx.beat(
                round.id,
                None,
                &state,
                &metrics_json("sample", "starting", &summary, &series),
            )?;
            c
        }
    };
    let dir = cfg.workdir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let say = |s: &str| {
        if !ctx.quiet {
            eprintln!("round {} ({}): {s}", round.id, round.name);
        }
    };
    let start = Checkpoint::load(&cfg.policy, dev)
        .with_context(|| format!("round {}: cannot load its starting policy", round.id))?;
    let tok = Tokenizer::load(&cfg.policy)?;
    let stops = stop_tokens(&start, &tok);

    // (a) + (b): sample and push comparisons, once
    if state.batch_id.is_none() {
        let batch_name = format!("round-{}", round.id);
        let existing = ctx
            .client
            .batches()?
            .into_iter()
            .find(|b| b.name == batch_name && b.comparisons > 0);
        let batch_id = match existing {
            Some(b) => b.batch_id,
            None => {
                ctx.beat(
                    round.id,
                    None,
                    &state,
                    &metrics_json("sample", "sampling responses", &summary, &series),
                )?;
                let prompts = pick_prompts(&ctx.client, &cfg)?;
                // the policy step trains on exactly these prompts, even if the pool grows meanwhile
                write_prompts(&cfg, &dir.join(PROMPTS_FILE), &prompts)?;
                say(&format!(
                    "sampling {} responses for {} prompts",
                    cfg.k * prompts.len(),
                    prompts.len()
                ));
                let mut comparisons = vec![];
                for (i, p) in prompts.iter().enumerate() {
                    let content = content_of(&cfg, &p.messages);
                    let ids = crate::data::Encoder { tok: &tok }.prompt(&content)?;
                    let sc = SamplingConfig {
                        max_new_tokens: cfg.max_new_tokens,
                        temperature: cfg.temperature,
                        top_k: 0,
                        top_p: 1.0,
                        seed: cfg.seed ^ ((round.id as u64) << 32) ^ i as u64,
                        stop_tokens: stops.clone(),
                    };
                    let gens = generate(&start.model, &vec![ids; cfg.k], &sc)?;
                    let responses = gens
                        .iter()
                        .map(|g| {
                            Ok(NewResponse {
                                // a byte-level model can emit NUL, which the server (rightly) refuses in text
                                text: tok.decode(&g.tokens, true)?.replace('\0', "\u{FFFD}"),
                                model: Some(cfg.policy.display().to_string()),
                                round_id: Some(round.id),
                                sampling: Some(json!({"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens})),
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    // the server refuses empty and duplicate responses (a pair
                    // of equal texts has nothing to prefer): keep distinct ones
                    let mut responses = responses;
                    let mut seen = std::collections::HashSet::new();
                    responses.retain(|r| {
                        let t = r.text.trim().to_string();
                        !t.is_empty() && seen.insert(t)
                    });
                    if responses.len() < 2 {
                        say(&format!(
                            "prompt {}: fewer than 2 distinct non-empty samples; skipped",
                            p.id
                        ));
                        continue;
                    }
                    comparisons.push(NewComparison {
                        prompt_id: Some(p.id),
                        prompt_external_id: None,
                        responses,
                    });
                }
                if comparisons.is_empty() {
                    bail!("no prompt got 2 distinct non-empty samples; raise the temperature or K");
                }
                let req = CreateComparisons {
                    batch: batch_name,
                    labels_wanted: Some(cfg.labels_wanted),
                    round_id: Some(round.id),
                    comparisons,
                };
                ctx.client.create_comparisons(&req)?.batch_id
            }
        };
        state.batch_id = Some(batch_id);
        ctx.beat(
            round.id,
            None,
            &state,
            &metrics_json("label", "waiting for labels", &summary, &series),
        )?;
    }
    let batch_id = state.batch_id.expect("set above");

    // (c) wait for the labels
    let t0 = Instant::now();
    let mut last_beat = Instant::now();
    let mut shown = -1;
    loop {
        let b = ctx.client.batch(batch_id)?;
        if b.complete >= b.comparisons {
            break;
        }
        if b.labels != shown {
            say(&format!(
                "labels {}/{} ({} comparisons complete of {})",
                b.labels,
                b.labels + b.remaining_labels,
                b.complete,
                b.comparisons
            ));
            shown = b.labels;
        }
        if last_beat.elapsed() > Duration::from_secs(5) {
            let detail = format!("{} of {} labels", b.labels, b.labels + b.remaining_labels);
            ctx.beat(
                round.id,
                None,
                &state,
                &metrics_json("label", &detail, &summary, &series),
            )?;
            last_beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(
            if t0.elapsed() < Duration::from_secs(10) {
                200
            } else {
                1000
            },
        ));
    }
    if let Some(alpha) = ctx
        .client
        .agreement(batch_id)
        .ok()
        .and_then(|a| a.krippendorff_alpha)
    {
        summary.insert("label_agreement".into(), alpha);
    }

    // (d) reward model on all preference data so far
    let rm_dir = dir.join("rm");
    let opts = DataOptions {
        margins: reward_model::loss::MarginTable::default(),
        aggregation: reward_model::data::Aggregation::PerLabeler,
    };
    let all_pairs = as_text_pairs(
        &cfg,
        reward_model::data::fetch_pairs(&ctx.server, &ctx.token, &ExportQuery::default(), &opts)?,
    );
    if !finished(&rm_dir) {
        ctx.beat(
            round.id,
            None,
            &state,
            &metrics_json(
                "reward_model",
                &format!("{} pairs", all_pairs.len()),
                &summary,
                &series,
            ),
        )?;
        say(&format!(
            "training the reward model on {} pairs",
            all_pairs.len()
        ));
        train_rm(&cfg, &all_pairs, &rm_dir, dev, ctx.quiet)?;
    }
    if let Ok(text) = std::fs::read_to_string(rm_dir.join("eval_report.json")) {
        if let Some(a) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["accuracy"].as_f64())
        {
            state.rm_accuracy = Some(a);
            summary.insert("rm_accuracy".into(), a);
        }
    }
    series.insert(
        "rm_loss".into(),
        metric_series(&reward_model::train::metrics_path(&rm_dir), "loss"),
    );

    // (e) the policy
    ctx.beat(
        round.id,
        None,
        &state,
        &metrics_json("policy", cfg.recipe.as_str(), &summary, &series),
    )?;
    let round_pairs: Vec<Pair> = as_text_pairs(
        &cfg,
        reward_model::data::fetch_pairs(
            &ctx.server,
            &ctx.token,
            &ExportQuery {
                round_id: Some(round.id),
                ..Default::default()
            },
            &opts,
        )?,
    );
    let prefs = dir.join("preferences.jsonl");
    write_pairs(&prefs, &round_pairs)?;
    let prompts_file = dir.join(PROMPTS_FILE);
    if !prompts_file.is_file() {
        // a round whose comparisons came from a killed run that had not written the file
        write_prompts(&cfg, &prompts_file, &pick_prompts(&ctx.client, &cfg)?)?;
    }
    let mut current = cfg.policy.clone();
    let stages: Vec<&str> = match cfg.recipe {
        Recipe::Rs => vec!["rs"],
        Recipe::Dpo => vec!["dpo"],
        Recipe::Ppo => vec!["ppo"],
        Recipe::RsPpo => vec!["rs", "ppo"],
        Recipe::RsDpo => vec!["rs", "dpo"],
    };
    for stage in stages {
        let out = dir.join(stage);
        if !finished(&out) {
            say(&format!("{stage} from {}", current.display()));
            let run = RunArgs {
                policy: current.clone(),
                out: out.clone(),
                resume: true,
                overwrite: false,
                device: ctx.device,
            };
            match stage {
                "rs" => crate::cli::run_rs(RsArgs {
                    run,
                    prompts: prompts_file.clone(),
                    reward: reward_args(&rm_dir),
                    k: cfg.k,
                    temperature: cfg.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    max_new_tokens: cfg.max_new_tokens,
                    pool: vec![],
                    keep_truncated: false,
                    gen_batch: 64,
                    opt: loop_args(&cfg.rs, cfg.seed, ctx.quiet),
                })?,
                "dpo" => crate::cli::run_dpo(DpoArgs {
                    run,
                    reference: None,
                    data: vec![prefs.clone()],
                    server: None,
                    token: None,
                    round_id: None,
                    aggregation: reward_model::data::Aggregation::PerLabeler,
                    eval_data: None,
                    eval_fraction: 0.0,
                    loss: crate::dpo::DpoLoss::Sigmoid,
                    beta: 0.1,
                    label_smoothing: 0.0,
                    rpo_alpha: 0.0,
                    max_len: 4096,
                    opt: loop_args(&cfg.dpo, cfg.seed, ctx.quiet),
                })?,
                _ => crate::cli::run_ppo(PpoArgs {
                    run,
                    // Llama-2: PPO's reference is the policy PPO starts from
                    // (in rs+ppo, the rejection-sampling output)
                    reference: Some(current.clone()),
                    value_model: Some(rm_dir.clone()),
                    prompts: prompts_file.clone(),
                    reward: reward_args(&rm_dir),
                    preset: PpoPreset::Trl,
                    beta: None,
                    kl_estimator: None,
                    target_kl: None,
                    kl_horizon: 10000.0,
                    cliprange: None,
                    cliprange_value: None,
                    vf_coef: None,
                    gamma: None,
                    lam: None,
                    whiten_rewards: false,
                    missing_eos_penalty: None,
                    clip_grad: None,
                    vf_lr: None,
                    ppo_epochs: None,
                    mini_batches: None,
                    temperature: Some(cfg.temperature),
                    max_new_tokens: Some(cfg.max_new_tokens),
                    opt: loop_args(&cfg.ppo, cfg.seed, ctx.quiet),
                })?,
            }
            if !finished(&out) {
                bail!("round {}: the {stage} stage stopped before the end (interrupted); run the worker again to continue", round.id);
            }
        }
        let key = match stage {
            "ppo" => "objective/scores",
            _ => "loss",
        };
        series.insert(
            format!("{stage}_{}", if stage == "ppo" { "reward" } else { "loss" }),
            metric_series(&policy::train_loop::metrics_path(&out), key),
        );
        if stage == "ppo" {
            series.insert(
                "kl".into(),
                metric_series(&policy::train_loop::metrics_path(&out), "objective/kl"),
            );
        }
        current = out;
    }

    // (f) evaluate
    ctx.beat(
        round.id,
        None,
        &state,
        &metrics_json("eval", "evaluating", &summary, &series),
    )?;
    let report = evaluate_round(&cfg, &current, &rm_dir, dev)?;
    for (k, v) in [
        ("gold_reward", report.gold_reward),
        ("rm_score", report.rm_score),
        ("kl", report.kl),
        ("win_rate", report.win_rate),
    ] {
        if let Some(v) = v {
            summary.insert(k.into(), v);
        }
    }
    state.eval = Some(report);
    // (g) done
    state.output = Some(current);
    ctx.beat(
        round.id,
        Some("done"),
        &state,
        &metrics_json("done", "", &summary, &series),
    )?;
    write_plots(&ctx.client, &cfg)?;
    Ok(state)
}

/// Writes the plots of the round's series (every round of its prompt source,
/// the dashboard's charts) as SVG files into `WORKDIR/plots`.
fn write_plots(client: &Client, cfg: &RoundConfig) -> Result<()> {
    let rounds: Vec<Round> = client
        .rounds()?
        .into_iter()
        .filter(|r| crate::worker::source_of(r).as_deref() == Some(cfg.prompt_source.as_str()))
        .collect();
    let dir = cfg.workdir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (stem, svg) in annotation_server::plots::all_plots(&rounds) {
        policy::safetensors_io::write_file_synced(
            &dir.join(format!("{stem}.svg")),
            svg.as_bytes(),
        )?;
    }
    Ok(())
}

fn metric_series(path: &Path, key: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
        .collect()
}

fn content_json(c: &Content) -> Value {
    match c {
        Content::Text(t) => json!(t),
        Content::Chat(m) => serde_json::to_value(m).unwrap_or(Value::Null),
    }
}

fn write_pairs(path: &Path, pairs: &[Pair]) -> Result<()> {
    let text: String = pairs
        .iter()
        .map(|p| format!("{}\n", json!({"prompt": content_json(&p.prompt), "chosen": content_json(&p.chosen), "rejected": content_json(&p.rejected)})))
        .collect();
    policy::safetensors_io::write_file_synced(path, text.as_bytes())
}

fn write_prompts(
    cfg: &RoundConfig,
    path: &Path,
    prompts: &[annotation_server::api::Prompt],
) -> Result<()> {
    let text: String = prompts
        .iter()
        .map(|p| {
            format!(
                "{}\n",
                json!({"prompt": content_json(&content_of(cfg, &p.messages)), "tags": p.tags})
            )
        })
        .collect();
    policy::safetensors_io::write_file_synced(path, text.as_bytes())
}

fn train_rm<D: Dev>(
    cfg: &RoundConfig,
    pairs: &[Pair],
    out: &Path,
    dev: &D,
    quiet: bool,
) -> Result<()> {
    use reward_model::train::{load_checkpoint, split_held_out, train, TrainConfig};
    let enc = reward_model::data::Encoder::load(&cfg.initial_policy)?;
    let (encoded, _) = reward_model::data::encode_pairs(&enc, pairs, 4096)?;
    let (tr, ev) = split_held_out(encoded, 0.2, cfg.seed)?;
    if tr.is_empty() {
        bail!("no preference pairs to train the reward model on (were all comparisons ties?)");
    }
    let (mut rm, resume) = match load_checkpoint(out, dev)? {
        Some((rm, opt, progress)) => (rm, Some((opt, progress))),
        None => (
            RewardModel::from_policy(&cfg.initial_policy, dev, cfg.seed)?,
            None,
        ),
    };
    let s = &cfg.rm;
    let tc = TrainConfig {
        lr: s.lr.unwrap_or(1e-5),
        batch_size: s.batch_size.unwrap_or(32),
        micro_batch: 16,
        epochs: s.epochs.unwrap_or(1.0),
        max_steps: s.steps,
        log_every: 1,
        seed: cfg.seed,
        progress: !quiet,
        ..TrainConfig::default()
    };
    policy::train_loop::install_interrupt_handler();
    let o = train(&mut rm, &tr, &ev, &tc, out, resume)?;
    if !o.finished {
        bail!("reward-model training stopped before the end (interrupted); run the worker again to continue");
    }
    Ok(())
}

/// The held-out prompts of a task (disjoint from the training pool by seed).
pub fn eval_prompts(
    task: &dyn crate::tasks::Task,
    n: usize,
    tok: &Tokenizer,
) -> Result<Vec<Prompt>> {
    task.prompts(n, 0xE7A1)
        .into_iter()
        .map(|t| {
            let ids = tok.encode(&t, true)?;
            Ok(Prompt {
                content: Content::Text(t),
                ids,
                unsafe_prompt: false,
            })
        })
        .collect()
}

fn evaluate_round<D: Dev>(
    cfg: &RoundConfig,
    policy_dir: &Path,
    rm_dir: &Path,
    dev: &D,
) -> Result<EvalReport> {
    let Some(task_name) = &cfg.task else {
        return Ok(EvalReport::default());
    };
    let task = crate::tasks::task(task_name)?;
    let tok = Tokenizer::load(policy_dir)?;
    let ck = Checkpoint::load(policy_dir, dev)?;
    let initial = Checkpoint::load(&cfg.initial_policy, dev)?;
    let baseline = Checkpoint::load(&cfg.policy, dev)?;
    let reward = Reward::model(rm_dir, dev, 64)?;
    let prompts = eval_prompts(task.as_ref(), cfg.eval_prompts, &tok)?;
    let gold = |p: &str, r: &str| task.gold(p, r);
    let setup = EvalSetup {
        tok: &tok,
        stop_tokens: stop_tokens(&ck, &tok),
        max_new_tokens: cfg.max_new_tokens,
        seed: 0xE7A1,
        batch: 64,
        gold: Some(&gold),
        reward: Some(&reward),
        reference: Some(&initial.model),
        baseline: Some(&baseline.model),
    };
    evaluate(&ck.model, &prompts, &setup)
}
