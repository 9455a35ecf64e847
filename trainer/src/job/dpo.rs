//! The DPO job: preference pairs from files and/or the annotation server,
//! a frozen reference (the starting policy unless given), the losses of
//! [`crate::dpo`].
use super::{finish_loop, load_reference, start, Outcome, RunSpec};
use crate::data::{encode_preferences, PreferencePair};
use crate::dpo::{DpoConfig, DpoLoss, DpoStage};
use crate::policy_io::PolicyFiles;
use anyhow::{bail, Result};
use policy::model::Dev;
use policy::train_loop::LoopConfig;
use reward_model::data::{read_pairs, Aggregation, DataOptions};
use reward_model::loss::MarginTable;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The annotation server as a source of preference pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSource {
    pub url: String,
    /// A researcher API token.
    pub token: Option<String>,
    /// Only batches of this round.
    pub round_id: Option<i64>,
}

/// A DPO run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpoJob {
    pub run: RunSpec,
    /// The frozen reference policy; `None`: the starting policy.
    pub reference: Option<PathBuf>,
    /// TRL JSONL {"prompt","chosen","rejected"} or ranked comparisons.
    pub data: Vec<PathBuf>,
    pub server: Option<ServerSource>,
    /// Every labeler's judgment, or one majority pair per response pair.
    pub aggregation: Aggregation,
    /// Held-out pairs; `None`: `eval_fraction` of the data, split by prompt.
    pub eval_data: Option<PathBuf>,
    pub eval_fraction: f32,
    pub dpo: DpoConfig,
    /// Pairs longer than this many tokens are dropped.
    pub max_len: usize,
    pub train: LoopConfig,
}

/// Defaults of a DPO job (TRL's `DPOConfig` where it has the setting).
pub mod defaults {
    use super::*;
    pub const BETA: f32 = 0.1;
    pub const EVAL_FRACTION: f32 = 0.05;
    pub const MAX_LEN: usize = 1024;
    pub const LOSS: DpoLoss = DpoLoss::Sigmoid;
    pub const AGGREGATION: Aggregation = Aggregation::PerLabeler;
    /// The loop settings of DPO.
    pub fn train() -> LoopConfig {
        LoopConfig {
            lr: 1e-6,
            ..LoopConfig::default()
        }
    }
}

impl DpoJob {
    /// A job with the default settings.
    pub fn new(run: RunSpec, data: Vec<PathBuf>) -> Self {
        DpoJob {
            run,
            reference: None,
            data,
            server: None,
            aggregation: defaults::AGGREGATION,
            eval_data: None,
            eval_fraction: defaults::EVAL_FRACTION,
            dpo: DpoConfig {
                loss: defaults::LOSS,
                beta: defaults::BETA,
                label_smoothing: 0.0,
                rpo_alpha: 0.0,
            },
            max_len: defaults::MAX_LEN,
            train: defaults::train(),
        }
    }
}

/// Runs a DPO job on `dev`.
pub fn run<D: Dev>(job: &DpoJob, dev: &D) -> Result<Outcome> {
    let (mut ck, tok, resume) = start(&job.run, dev)?;
    let reference_dir = job.reference.as_ref().unwrap_or(&job.run.policy);
    let reference = load_reference(reference_dir, dev)?.model;
    let opts = DataOptions {
        margins: MarginTable::off(),
        aggregation: job.aggregation,
    };
    let q = annotation_server::api::ExportQuery {
        round_id: job.server.as_ref().and_then(|s| s.round_id),
        ..Default::default()
    };
    let pairs = reward_model::data::read_sources(
        &job.data,
        job.server.as_ref().map(|s| s.url.as_str()),
        job.server.as_ref().and_then(|s| s.token.as_deref()),
        &q,
        &opts,
    )?;
    let (encoded, dropped) = encode_preferences(&tok, &pairs, job.max_len)?;
    if dropped > 0 {
        eprintln!("dropped {dropped} pairs longer than {} tokens", job.max_len);
    }
    let (train, eval): (Vec<PreferencePair>, Vec<PreferencePair>) = match &job.eval_data {
        Some(p) => (
            encoded,
            encode_preferences(&tok, &read_pairs(p, &opts)?, job.max_len)?.0,
        ),
        // pairs of one prompt stay on one side
        None => reward_model::train::split_by_group(
            encoded,
            |p| p.prompt.clone(),
            job.eval_fraction,
            job.train.seed,
        )?,
    };
    if train.is_empty() {
        bail!("no training pairs left (read {} pairs)", pairs.len());
    }
    eprintln!(
        "computing reference log-probs of {} pairs",
        train.len() + eval.len()
    );
    let mut stage = DpoStage::new(
        job.dpo,
        &reference,
        train,
        eval,
        PolicyFiles::of(&ck),
        job.train.micro_batch * 2,
    )?;
    drop(reference);
    finish_loop(&mut ck.model, &mut stage, &job.train, &job.run, resume)
}
