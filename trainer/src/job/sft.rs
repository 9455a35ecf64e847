//! The SFT job: supervised fine-tuning on TRL-format data, loss on response
//! (assistant) tokens only.
use super::{finish_loop, start, Outcome, RunSpec};
use crate::data::read_sft;
use crate::policy_io::PolicyFiles;
use crate::sft::SftStage;
use anyhow::{bail, Result};
use policy::model::Dev;
use policy::train_loop::LoopConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A supervised fine-tuning run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftJob {
    pub run: RunSpec,
    /// JSONL in a TRL format: {"prompt","completion"}, {"messages"} or {"text"}.
    pub data: Vec<PathBuf>,
    /// Held-out data in the same formats (its loss is logged as `eval_loss`).
    pub eval_data: Option<PathBuf>,
    /// Examples longer than this many tokens are dropped.
    pub max_len: usize,
    pub train: LoopConfig,
}

/// Longest example kept (tokens) when not given.
pub const MAX_LEN: usize = 1024;

/// The loop settings of SFT (and of rejection sampling's fine-tuning) when not given.
pub fn default_loop() -> LoopConfig {
    LoopConfig {
        lr: 1e-5,
        ..LoopConfig::default()
    }
}

impl SftJob {
    /// A job with the default settings.
    pub fn new(run: RunSpec, data: Vec<PathBuf>) -> Self {
        SftJob {
            run,
            data,
            eval_data: None,
            max_len: MAX_LEN,
            train: default_loop(),
        }
    }
}

/// Runs an SFT job on `dev`.
pub fn run<D: Dev>(job: &SftJob, dev: &D) -> Result<Outcome> {
    let (mut ck, tok, resume) = start(&job.run, dev)?;
    let mut train = vec![];
    for p in &job.data {
        let (s, dropped) = read_sft(p, &tok, job.max_len)?;
        if dropped > 0 {
            eprintln!(
                "{}: dropped {dropped} examples longer than {} tokens",
                p.display(),
                job.max_len
            );
        }
        train.extend(s);
    }
    let eval = match &job.eval_data {
        Some(p) => read_sft(p, &tok, job.max_len)?.0,
        None => vec![],
    };
    if train.is_empty() {
        bail!("no training examples left");
    }
    let mut stage = SftStage {
        train,
        eval,
        files: PolicyFiles::of(&ck),
        eval_batch: job.train.micro_batch * 2,
        name: "sft",
    };
    finish_loop(&mut ck.model, &mut stage, &job.train, &job.run, resume)
}
