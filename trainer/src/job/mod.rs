//! Training stages as library jobs. Each stage has a serde job type (like
//! TRL's `DPOConfig`: everything the run needs, defaults from its `new`) and
//! a `run(&job, device) -> Outcome` in its own module. The CLI (`crate::cli`)
//! only maps flags to jobs; rounds (`crate::rounds`) build jobs from their
//! configuration. Every job writes a HF policy directory to `run.out` (plus
//! `trainer_state/` to continue it) and its metrics to `OUT.metrics.jsonl`.
pub mod dpo;
pub mod ppo;
pub mod rs;
pub mod sft;

use crate::policy_io::load_policy;
use crate::reward::Reward;
use anyhow::Result;
use policy::checkpoint::Checkpoint;
use policy::model::Dev;
use policy::tokenizer::Tokenizer;
use policy::train_loop::{self, install_interrupt_handler, metrics_path, LoopConfig, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a run starts and where it goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    /// The starting policy (a HF Llama directory with its tokenizer).
    pub policy: PathBuf,
    /// Output directory; metrics go to `OUT.metrics.jsonl`.
    pub out: PathBuf,
    /// Continue the run saved in `out` (same data and settings), exactly.
    #[serde(default)]
    pub resume: bool,
    /// Replace what is at `out`; the new output is built beside it and swapped in at the end.
    #[serde(default)]
    pub overwrite: bool,
}

/// Where rewards come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    /// A reward model directory (`rlhf rm train`).
    Model(PathBuf),
    /// Llama-2's combination of a safety and a helpfulness reward model.
    SafetyHelpfulness {
        safety: PathBuf,
        helpfulness: PathBuf,
    },
    /// A programmatic reward: `contains:WORD` or `count:WORD`.
    Function(String),
}

/// A reward and how many rows it scores per forward pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RewardSpec {
    pub source: RewardSource,
    pub score_batch: usize,
}

impl RewardSpec {
    /// Rows per reward-model forward pass when not given.
    pub const SCORE_BATCH: usize = 16;

    /// Loads the reward on `dev`.
    pub fn load<D: Dev>(&self, dev: &D) -> Result<Reward<D>> {
        match &self.source {
            RewardSource::Model(rm) => Reward::model(rm, dev, self.score_batch),
            RewardSource::SafetyHelpfulness {
                safety,
                helpfulness,
            } => Reward::safety_helpfulness(safety, helpfulness, dev, self.score_batch),
            RewardSource::Function(f) => Reward::builtin(f),
        }
    }

    /// The reward model whose backbone can start a value model (the helpfulness one of a pair).
    pub fn model_dir(&self) -> Option<&Path> {
        match &self.source {
            RewardSource::Model(rm) => Some(rm),
            RewardSource::SafetyHelpfulness { helpfulness, .. } => Some(helpfulness),
            RewardSource::Function(_) => None,
        }
    }
}

/// What a finished (or stopped) job reports.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// False when stopped early by `stop_after` (an interrupt is an error).
    pub finished: bool,
    /// Optimizer steps (PPO: iterations) done, including before a resume.
    pub steps: u64,
    pub total_steps: u64,
    /// Training metrics of the last logging window.
    pub last: BTreeMap<String, f64>,
    /// Final held-out metrics, when the stage has a held-out set.
    pub eval: Option<BTreeMap<String, f64>>,
}

/// An optimizer and the progress of a run to resume.
type Resume<D> = Option<(policy::train::AdamW<D>, serde_json::Value)>;

/// The model to train: resumed from `out`, or the starting policy.
fn start<D: Dev>(r: &RunSpec, dev: &D) -> Result<(Checkpoint<D>, Tokenizer, Resume<D>)> {
    if policy::out_dir::check_training(&r.out, r.resume, r.overwrite)? {
        let (ck, tok) = load_policy(&r.out, dev)?;
        let state = train_loop::load_state(&r.out, &ck.model, dev)?;
        eprintln!("resuming {}", r.out.display());
        return Ok((ck, tok, state));
    }
    if r.resume {
        eprintln!(
            "--resume: {} holds no training state; starting from {}",
            r.out.display(),
            r.policy.display()
        );
    }
    let (ck, tok) = load_policy(&r.policy, dev)?;
    Ok((ck, tok, None))
}

/// Runs a stage on the shared loop and reports how it ended.
fn finish_loop<D: Dev, S: Stage<D>>(
    model: &mut S::Model,
    stage: &mut S,
    cfg: &LoopConfig,
    r: &RunSpec,
    resume: Resume<D>,
) -> Result<Outcome> {
    install_interrupt_handler();
    eprintln!(
        "{}: {} examples, {} steps",
        stage.name(),
        stage.len(),
        cfg.total_steps(stage.len())
    );
    let o = train_loop::run(model, stage, cfg, &r.out, resume)?;
    let outcome = Outcome {
        finished: o.finished,
        steps: o.steps,
        total_steps: o.total_steps,
        last: o.last_train,
        eval: o.eval,
    };
    if !o.finished {
        train_loop::stopped_early(o.steps, o.total_steps, &r.out)?;
        return Ok(outcome);
    }
    let show = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("last steps: {}", show(&outcome.last));
    if let Some(e) = &outcome.eval {
        eprintln!("held-out: {}", show(e));
    }
    wrote(&r.out);
    Ok(outcome)
}

fn wrote(out: &Path) {
    eprintln!(
        "wrote {} (metrics: {})",
        out.display(),
        metrics_path(out).display()
    );
}

/// Loads a frozen reference policy (DPO, PPO).
fn load_reference<D: Dev>(dir: &Path, dev: &D) -> Result<Checkpoint<D>> {
    use anyhow::Context;
    Checkpoint::load(dir, dev)
        .with_context(|| format!("cannot load the reference policy {}", dir.display()))
}
