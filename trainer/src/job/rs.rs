//! The rejection-sampling job: K samples per prompt from the starting
//! policy, the best of each by reward (pooled with earlier rounds' best,
//! re-scored), then SFT on them (Llama-2's recipe).
use super::{finish_loop, start, Outcome, RewardSpec, RunSpec};
use crate::data::{read_prompts, Sequence};
use crate::policy_io::PolicyFiles;
use crate::rs::{self, RsConfig};
use crate::sft::SftStage;
use anyhow::{bail, Result};
use policy::generate::stop_tokens;
use policy::generate::SamplingConfig;
use policy::model::Dev;
use policy::train_loop::LoopConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A rejection-sampling run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RsJob {
    pub run: RunSpec,
    /// JSONL: {"prompt": text or messages, "unsafe"?: bool, "tags"?: [..]}.
    pub prompts: PathBuf,
    pub reward: RewardSpec,
    /// Samples per prompt.
    pub k: usize,
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Best samples of earlier rounds (their `OUT.best.jsonl`), re-scored with this run's reward.
    pub pool: Vec<PathBuf>,
    /// Keep responses that hit `max_new_tokens` without a stop token.
    pub keep_truncated: bool,
    /// Sequences per generation batch.
    pub gen_batch: usize,
    /// The fine-tuning on the kept samples (its seed also seeds sampling).
    pub train: LoopConfig,
}

/// Defaults of a rejection-sampling job.
pub mod defaults {
    pub const K: usize = 4;
    pub const TEMPERATURE: f32 = 1.0;
    pub const TOP_P: f32 = 1.0;
    pub const MAX_NEW_TOKENS: usize = 128;
    pub const GEN_BATCH: usize = 16;
}

impl RsJob {
    /// A job with the default settings.
    pub fn new(run: RunSpec, prompts: PathBuf, reward: RewardSpec) -> Self {
        RsJob {
            run,
            prompts,
            reward,
            k: defaults::K,
            temperature: defaults::TEMPERATURE,
            top_k: 0,
            top_p: defaults::TOP_P,
            max_new_tokens: defaults::MAX_NEW_TOKENS,
            pool: vec![],
            keep_truncated: false,
            gen_batch: defaults::GEN_BATCH,
            train: super::sft::default_loop(),
        }
    }
}

/// The side files of a rejection-sampling run whose model goes to `out`:
/// all samples, the kept ones, the report.
pub fn side_files(out: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (
        with(".samples.jsonl"),
        with(".best.jsonl"),
        with(".rs_report.json"),
    )
}

/// Runs a rejection-sampling job on `dev`.
pub fn run<D: Dev>(job: &RsJob, dev: &D) -> Result<Outcome> {
    let (mut ck, tok, resume) = start(&job.run, dev)?;
    let (samples_path, best_path, report_path) = side_files(&job.run.out);
    let kept = if resume.is_some() && best_path.is_file() {
        eprintln!(
            "using the responses already selected in {}",
            best_path.display()
        );
        rs::read_samples(&best_path)?
    } else {
        let reward = job.reward.load(dev)?;
        crate::reward::check_vocab(&reward, ck.model.cfg.vocab_size)?;
        let prompts = read_prompts(&job.prompts, &tok)?;
        let cfg = RsConfig {
            k: job.k,
            sampling: SamplingConfig {
                max_new_tokens: job.max_new_tokens,
                temperature: job.temperature,
                top_k: job.top_k,
                top_p: job.top_p,
                seed: job.train.seed,
                stop_tokens: stop_tokens(&ck, &tok),
            },
            gen_batch: job.gen_batch,
            progress: job.train.progress,
        };
        eprintln!(
            "sampling {} responses for {} prompts",
            job.k * prompts.len(),
            prompts.len()
        );
        let mut samples = rs::generate_samples(&ck.model, &tok, &prompts, &cfg)?;
        // earlier rounds' best are re-scored with this round's reward, in the
        // same call as this round's samples, so all rewards share one scale
        let current = samples.len();
        for p in &job.pool {
            samples.extend(rs::read_samples(p)?);
        }
        rs::score(&mut samples, &prompts, &tok, &reward)?;
        let pool = samples.split_off(current);
        let kept = rs::select_best(&samples, &pool, job.keep_truncated);
        let report = rs::report(&samples, &kept, prompts.len(), &cfg);
        rs::write_samples(&samples_path, &samples)?;
        rs::write_samples(&best_path, &kept)?;
        policy::fs_atomic::write_file_synced(
            &report_path,
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        eprintln!(
            "reward of samples: mean {:.4} (std {:.4}, max {:.4}); of kept: mean {:.4} ({} from earlier rounds); report: {}",
            report.samples.mean, report.samples.std, report.samples.max, report.kept.mean, report.kept_from_pool, report_path.display()
        );
        kept
    };
    let train: Vec<Sequence> = rs::to_sequences(&kept);
    if train.is_empty() {
        bail!(
            "no response was kept: every sample was empty{}",
            if job.keep_truncated {
                ""
            } else {
                " or hit --max-new-tokens without a stop token (raise --max-new-tokens, or pass --keep-truncated)"
            }
        );
    }
    let mut stage = SftStage {
        train,
        eval: vec![],
        files: PolicyFiles::of(&ck),
        eval_batch: job.train.micro_batch * 2,
        name: "rs",
    };
    finish_loop(&mut ck.model, &mut stage, &job.train, &job.run, resume)
}
