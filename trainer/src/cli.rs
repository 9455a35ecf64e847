//! `rlhf sft|rs|dpo|ppo`: flags mapped to the training jobs of
//! [`crate::job`] (which hold the defaults and do the work). Every run writes
//! a HF policy directory to `--out` (plus `trainer_state/` to continue it)
//! and its metrics to `OUT.metrics.jsonl`; `--resume` continues an
//! interrupted run exactly (Ctrl-C stops at the next step with a checkpoint).
use crate::dpo::DpoLoss;
use crate::job::dpo::{self as dpo_job, DpoJob, ServerSource};
use crate::job::ppo::PpoJob;
use crate::job::rs::{self as rs_job, RsJob};
use crate::job::sft::{self as sft_job, SftJob};
use crate::job::{RewardSource, RewardSpec, RunSpec};
use crate::ppo::PpoConfig;
use crate::ppo_math::{KlController, KlEstimator};
use anyhow::{bail, Result};
use clap::Args;
use policy::device::{DeviceKind, OnDevice};
use policy::model::Dev;
use policy::train_loop::LoopConfig;
use reward_model::data::Aggregation;
use std::path::PathBuf;

pub use policy::train_loop::LoopArgs;

/// Where the run starts, where it goes, on which device.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The starting policy (a HF Llama directory with its tokenizer).
    #[arg(long)]
    pub policy: PathBuf,
    /// Output directory (a HF Llama directory plus `trainer_state/`); metrics go to OUT.metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run saved in OUT (same data and settings), exactly.
    #[arg(long)]
    pub resume: bool,
    /// Replace what is at OUT (a non-empty directory, a file, an earlier run);
    /// the new output is built beside it and swapped in at the end.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Device to run on.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// `rlhf sft`.
#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Training data, JSONL in a TRL format: {"prompt","completion"}, {"messages"} or {"text"} (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Held-out data in the same formats (its loss is logged as eval_loss).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Drop examples longer than this many tokens.
    #[arg(long, default_value_t = sft_job::MAX_LEN)]
    pub max_len: usize,
    #[command(flatten)]
    pub opt: LoopArgs,
}

/// Where rewards come from (exactly one).
#[derive(Args, Debug, Clone)]
pub struct RewardArgs {
    /// A reward model directory (`rlhf rm train`).
    #[arg(long, group = "reward")]
    pub reward_model: Option<PathBuf>,
    /// Llama-2's combination: the safety reward model (with --helpfulness-model).
    #[arg(long, requires = "helpfulness_model", group = "reward")]
    pub safety_model: Option<PathBuf>,
    /// Llama-2's combination: the helpfulness reward model (with --safety-model).
    #[arg(long, requires = "safety_model")]
    pub helpfulness_model: Option<PathBuf>,
    /// A programmatic reward: contains:WORD or count:WORD.
    #[arg(long, group = "reward")]
    pub reward_fn: Option<String>,
    /// Rows per reward-model forward pass.
    #[arg(long, default_value_t = RewardSpec::SCORE_BATCH)]
    pub score_batch: usize,
}

impl RewardArgs {
    /// The reward these flags name.
    pub fn spec(&self) -> Result<RewardSpec> {
        let source = match (&self.reward_model, &self.safety_model, &self.helpfulness_model, &self.reward_fn) {
            (Some(rm), None, None, None) => RewardSource::Model(rm.clone()),
            (None, Some(s), Some(h), None) => RewardSource::SafetyHelpfulness { safety: s.clone(), helpfulness: h.clone() },
            (None, None, None, Some(f)) => RewardSource::Function(f.clone()),
            _ => bail!("give one reward: --reward-model DIR, --safety-model DIR with --helpfulness-model DIR, or --reward-fn SPEC"),
        };
        Ok(RewardSpec {
            source,
            score_batch: self.score_batch,
        })
    }
}

/// `rlhf rs`.
#[derive(Args, Debug)]
pub struct RsArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompts, JSONL: {"prompt": text or messages, "unsafe"?: bool, "tags"?: [..]}.
    #[arg(long)]
    pub prompts: PathBuf,
    #[command(flatten)]
    pub reward: RewardArgs,
    /// Samples per prompt.
    #[arg(long, default_value_t = rs_job::defaults::K)]
    pub k: usize,
    /// Sampling temperature (Llama-2 re-tuned it per round; 1.2–1.3 was best for large K).
    #[arg(long, default_value_t = rs_job::defaults::TEMPERATURE)]
    pub temperature: f32,
    /// Sample among the K most likely tokens only (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = rs_job::defaults::TOP_P)]
    pub top_p: f32,
    /// Response length limit (tokens).
    #[arg(long, default_value_t = rs_job::defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Best samples of earlier rounds (their OUT.best.jsonl) to pool with (repeatable);
    /// they are re-scored with this run's reward.
    #[arg(long)]
    pub pool: Vec<PathBuf>,
    /// Also keep responses that hit --max-new-tokens without a stop token
    /// (by default they are never kept: training on them teaches the model not to stop).
    #[arg(long)]
    pub keep_truncated: bool,
    /// Sequences per generation batch.
    #[arg(long, default_value_t = rs_job::defaults::GEN_BATCH)]
    pub gen_batch: usize,
    #[command(flatten)]
    pub opt: LoopArgs,
}

/// `rlhf dpo`.
#[derive(Args, Debug)]
pub struct DpoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The frozen reference policy [the starting policy, i.e. refreshed every round].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Preference data: TRL JSONL {"prompt","chosen","rejected"} or ranked comparisons (repeatable).
    #[arg(long, required_unless_present = "server")]
    pub data: Vec<PathBuf>,
    /// Also read the annotation server's judgments over HTTP.
    #[arg(long)]
    pub server: Option<String>,
    /// Researcher API token for --server.
    #[arg(long, env = "RLHF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --server: only batches of this round.
    #[arg(long)]
    pub round_id: Option<i64>,
    /// Use every labeler's judgment, or one majority pair per response pair.
    #[arg(long, value_enum, default_value_t = dpo_job::defaults::AGGREGATION)]
    pub aggregation: Aggregation,
    /// Held-out pairs; default: a split of --data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Fraction of pairs held out when --eval-data is not given.
    #[arg(long, default_value_t = dpo_job::defaults::EVAL_FRACTION)]
    pub eval_fraction: f32,
    /// The preference loss.
    #[arg(long, value_enum, default_value_t = dpo_job::defaults::LOSS)]
    pub loss: DpoLoss,
    /// Strength of the KL regularization to the reference (β).
    #[arg(long, default_value_t = dpo_job::defaults::BETA)]
    pub beta: f32,
    /// Label smoothing ε (cDPO with --loss sigmoid, robust DPO with --loss robust).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Weight of the NLL on chosen responses (RPO; Llama-3 used 0.2).
    #[arg(long, default_value_t = 0.0)]
    pub rpo_alpha: f32,
    /// Drop pairs longer than this many tokens.
    #[arg(long, default_value_t = dpo_job::defaults::MAX_LEN)]
    pub max_len: usize,
    #[command(flatten)]
    pub opt: LoopArgs,
}

/// PPO presets.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PpoPreset {
    /// TRL's PPOConfig defaults.
    Trl,
    /// The Llama-2 paper's settings.
    Llama2,
}

/// `rlhf ppo`.
#[derive(Args, Debug)]
pub struct PpoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The frozen reference policy [the starting policy].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Initial value model: a reward model directory [--reward-model, else the policy with a new head].
    #[arg(long)]
    pub value_model: Option<PathBuf>,
    /// Prompts, JSONL: {"prompt": text or messages, "unsafe"?: bool}.
    #[arg(long)]
    pub prompts: PathBuf,
    #[command(flatten)]
    pub reward: RewardArgs,
    #[arg(long, value_enum, default_value = "trl")]
    pub preset: PpoPreset,
    /// KL coefficient β [preset: trl 0.05, llama2 0.01].
    #[arg(long)]
    pub beta: Option<f32>,
    #[arg(long, value_enum)]
    pub kl_estimator: Option<KlEstimator>,
    /// Adapt β towards this KL per episode (with --kl-horizon).
    #[arg(long)]
    pub target_kl: Option<f32>,
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f32,
    #[arg(long)]
    pub cliprange: Option<f32>,
    #[arg(long)]
    pub cliprange_value: Option<f32>,
    #[arg(long)]
    pub vf_coef: Option<f32>,
    #[arg(long)]
    pub gamma: Option<f32>,
    #[arg(long)]
    pub lam: Option<f32>,
    /// Whiten the per-token rewards (mean kept).
    #[arg(long)]
    pub whiten_rewards: bool,
    /// Subtract this from the score of responses that did not end with EOS.
    #[arg(long)]
    pub missing_eos_penalty: Option<f32>,
    /// Clip the global gradient norm (policy and value together) at --max-grad-norm [preset: trl false, llama2 true].
    #[arg(long)]
    pub clip_grad: Option<bool>,
    /// Peak learning rate of the value model [the policy's --lr].
    #[arg(long)]
    pub vf_lr: Option<f32>,
    /// Passes over each iteration's episodes (default: the preset's).
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// Minibatches per pass (one optimizer step each) (default: the preset's).
    #[arg(long)]
    pub mini_batches: Option<usize>,
    /// Sampling temperature; log-probs use it too [preset: trl 0.7, llama2 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Response length limit (default: the preset's).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    pub opt: LoopArgs,
}

impl RunArgs {
    /// Where the job starts and goes.
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            policy: self.policy.clone(),
            out: self.out.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
        }
    }
}

impl SftArgs {
    /// The job these flags describe.
    pub fn job(&self) -> Result<SftJob> {
        Ok(SftJob {
            eval_data: self.eval_data.clone(),
            max_len: self.max_len,
            train: self.opt.apply(sft_job::default_loop()),
            ..SftJob::new(self.run.spec(), self.data.clone())
        })
    }
}

impl RsArgs {
    /// The job these flags describe.
    pub fn job(&self) -> Result<RsJob> {
        Ok(RsJob {
            k: self.k,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            pool: self.pool.clone(),
            keep_truncated: self.keep_truncated,
            gen_batch: self.gen_batch,
            train: self.opt.apply(sft_job::default_loop()),
            ..RsJob::new(self.run.spec(), self.prompts.clone(), self.reward.spec()?)
        })
    }
}

impl DpoArgs {
    /// The job these flags describe.
    pub fn job(&self) -> Result<DpoJob> {
        let mut job = DpoJob::new(self.run.spec(), self.data.clone());
        job.reference = self.reference.clone();
        job.server = self.server.as_ref().map(|url| ServerSource {
            url: url.clone(),
            token: self.token.clone(),
            round_id: self.round_id,
        });
        job.aggregation = self.aggregation;
        job.eval_data = self.eval_data.clone();
        job.eval_fraction = self.eval_fraction;
        job.dpo.loss = self.loss;
        job.dpo.beta = self.beta;
        job.dpo.label_smoothing = self.label_smoothing;
        job.dpo.rpo_alpha = self.rpo_alpha;
        job.max_len = self.max_len;
        job.train = self.opt.apply(dpo_job::defaults::train());
        Ok(job)
    }
}

impl PpoArgs {
    /// The job these flags describe: the preset with the flags given on top.
    pub fn job(&self) -> Result<PpoJob> {
        let a = self;
        let mut cfg = match a.preset {
            PpoPreset::Trl => PpoConfig::trl(),
            PpoPreset::Llama2 => PpoConfig::llama2(),
        };
        cfg.train = a.opt.apply(LoopConfig {
            log_every: 1,
            ..cfg.train.clone()
        });
        cfg.kl = KlController {
            beta: a.beta.unwrap_or(cfg.kl.beta),
            adaptive: a.target_kl.map(|t| (t, a.kl_horizon)),
        };
        cfg.kl_estimator = a.kl_estimator.unwrap_or(cfg.kl_estimator);
        cfg.cliprange = a.cliprange.unwrap_or(cfg.cliprange);
        cfg.cliprange_value = a.cliprange_value.unwrap_or(cfg.cliprange_value);
        cfg.vf_coef = a.vf_coef.unwrap_or(cfg.vf_coef);
        cfg.gamma = a.gamma.unwrap_or(cfg.gamma);
        cfg.lam = a.lam.unwrap_or(cfg.lam);
        cfg.whiten_rewards = a.whiten_rewards;
        cfg.missing_eos_penalty = a.missing_eos_penalty;
        cfg.ppo_epochs = a.ppo_epochs.unwrap_or(cfg.ppo_epochs);
        cfg.clip_grad = a.clip_grad.unwrap_or(cfg.clip_grad);
        cfg.vf_lr = a.vf_lr.or(cfg.vf_lr);
        cfg.mini_batches = a.mini_batches.unwrap_or(cfg.mini_batches);
        cfg.temperature = a.temperature.unwrap_or(cfg.temperature);
        cfg.max_new_tokens = a.max_new_tokens.unwrap_or(cfg.max_new_tokens);
        Ok(PpoJob {
            run: a.run.spec(),
            reference: a.reference.clone(),
            value_model: a.value_model.clone(),
            prompts: a.prompts.clone(),
            reward: a.reward.spec()?,
            ppo: cfg,
        })
    }
}

macro_rules! on_device {
    ($args:ty, $run:path) => {
        impl OnDevice for $args {
            fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
                $run(&self.job()?, dev).map(drop)
            }
        }
    };
}
on_device!(SftArgs, crate::job::sft::run);
on_device!(RsArgs, crate::job::rs::run);
on_device!(DpoArgs, crate::job::dpo::run);
on_device!(PpoArgs, crate::job::ppo::run);

/// Runs `rlhf sft`.
pub fn run_sft(a: SftArgs) -> Result<()> {
    a.run.device.dispatch(a)
}
/// Runs `rlhf rs`.
pub fn run_rs(a: RsArgs) -> Result<()> {
    a.run.device.dispatch(a)
}
/// Runs `rlhf dpo`.
pub fn run_dpo(a: DpoArgs) -> Result<()> {
    a.run.device.dispatch(a)
}
/// Runs `rlhf ppo`.
pub fn run_ppo(a: PpoArgs) -> Result<()> {
    a.run.device.dispatch(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Cmd {
        Sft(SftArgs),
        Rs(RsArgs),
        Dpo(DpoArgs),
    }

    fn parse(args: &[&str]) -> Cmd {
        Cmd::try_parse_from([&["rlhf"], args].concat()).unwrap()
    }

    fn same<T: serde::Serialize>(a: &T, b: &T) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }

    /// The flags' defaults are the jobs' (one place for each default).
    #[test]
    fn flags_left_out_give_the_jobs_defaults() {
        let run = RunSpec {
            policy: "P".into(),
            out: "O".into(),
            resume: false,
            overwrite: false,
        };
        let base = ["--policy", "P", "--out", "O"];
        let Cmd::Sft(a) = parse(&[&["sft"], &base[..], &["--data", "d.jsonl"]].concat()) else {
            unreachable!()
        };
        same(
            &a.job().unwrap(),
            &SftJob::new(run.clone(), vec!["d.jsonl".into()]),
        );
        let Cmd::Dpo(a) = parse(&[&["dpo"], &base[..], &["--data", "d.jsonl"]].concat()) else {
            unreachable!()
        };
        same(
            &a.job().unwrap(),
            &DpoJob::new(run.clone(), vec!["d.jsonl".into()]),
        );
        let Cmd::Rs(a) = parse(
            &[
                &["rs"],
                &base[..],
                &["--prompts", "p.jsonl", "--reward-model", "RM"],
            ]
            .concat(),
        ) else {
            unreachable!()
        };
        let reward = RewardSpec {
            source: RewardSource::Model("RM".into()),
            score_batch: RewardSpec::SCORE_BATCH,
        };
        same(
            &a.job().unwrap(),
            &RsJob::new(run, "p.jsonl".into(), reward),
        );
    }
}
