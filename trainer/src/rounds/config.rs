//! A round's configuration (its `config` on the server), its defaults, and
//! its resumable state (its `state` on the server).
use super::eval::EvalReport;
use policy::train_loop::LoopConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// Defaults of a round's settings: the flags of `rlhf round start`, and the
/// configuration of rounds queued without them (the dashboard form).
pub mod defaults {
    pub const PROMPTS_PER_ROUND: usize = 32;
    pub const K: usize = 4;
    pub const LABELS_WANTED: u32 = 1;
    pub const TEMPERATURE: f32 = 1.0;
    pub const MAX_NEW_TOKENS: usize = 64;
    pub const EVAL_PROMPTS: usize = 64;
    pub const PROMPT_FORMAT: &str = "chat";
    /// Where `rlhf round start` puts round outputs.
    pub const WORKDIR: &str = "rlhf-rounds";
}

fn d_prompts() -> usize {
    defaults::PROMPTS_PER_ROUND
}
fn d_k() -> usize {
    defaults::K
}
fn d_labels() -> u32 {
    defaults::LABELS_WANTED
}
fn d_temp() -> f32 {
    defaults::TEMPERATURE
}
fn d_tokens() -> usize {
    defaults::MAX_NEW_TOKENS
}
fn d_format() -> String {
    defaults::PROMPT_FORMAT.into()
}
fn d_eval() -> usize {
    defaults::EVAL_PROMPTS
}

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

    /// The stages it runs, in order; each starts from the previous one's output.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Recipe::Rs => &[Stage::Rs],
            Recipe::Dpo => &[Stage::Dpo],
            Recipe::Ppo => &[Stage::Ppo],
            Recipe::RsPpo => &[Stage::Rs, Stage::Ppo],
            Recipe::RsDpo => &[Stage::Rs, Stage::Dpo],
        }
    }
}

/// A policy-training stage of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Rejection sampling ([`crate::job::rs`]).
    Rs,
    /// DPO ([`crate::job::dpo`]).
    Dpo,
    /// PPO ([`crate::job::ppo`]).
    Ppo,
}

impl Stage {
    /// Its name: the folder of its output in the round's work directory.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Rs => "rs",
            Stage::Dpo => "dpo",
            Stage::Ppo => "ppo",
        }
    }
}

/// Training settings of a round's stages (defaults: the CLI's).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageSettings {
    pub lr: Option<f32>,
    pub steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub epochs: Option<f32>,
}

impl StageSettings {
    /// A stage's loop settings: its defaults (`base`) with these on top,
    /// every step logged (the dashboard plots them).
    pub fn loop_config(&self, base: LoopConfig, seed: u64, quiet: bool) -> LoopConfig {
        LoopConfig {
            lr: self.lr.unwrap_or(base.lr),
            max_steps: self.steps.or(base.max_steps),
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            epochs: self.epochs.unwrap_or(base.epochs),
            seed,
            progress: !quiet,
            log_every: 1,
            ..base
        }
    }
}

/// A round's configuration (the round's `config` on the server).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundConfig {
    pub recipe: Recipe,
    /// A built-in task with a gold reward (`review`, `arithmetic`), for evaluation.
    #[serde(default)]
    pub task: Option<String>,
    /// The round's starting policy (left out: the worker fills it, see `series::complete_config`).
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
    #[serde(default = "d_format")]
    pub prompt_format: String,
    /// 1-based position of the round in its series (which slice of the pool it takes).
    #[serde(default)]
    pub index: u64,
    #[serde(default = "d_prompts")]
    pub prompts_per_round: usize,
    /// Responses per prompt (one comparison of K responses each).
    #[serde(default = "d_k")]
    pub k: usize,
    #[serde(default = "d_labels")]
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
