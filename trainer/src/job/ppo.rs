//! The PPO job: a policy, a value model, a frozen reference (the starting
//! policy unless given) and a reward; the algorithm is [`crate::ppo`].
use super::{load_reference, wrote, Outcome, RewardSpec, RunSpec};
use crate::data::read_prompts;
use crate::policy_io::{load_policy, PolicyFiles};
use crate::ppo::{self, PpoConfig, PpoModels};
use anyhow::Result;
use policy::generate::stop_tokens;
use policy::model::Dev;
use policy::tokenizer::Tokenizer;
use policy::train_loop::{self, install_interrupt_handler};
use reward_model::model::RewardModel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A PPO run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PpoJob {
    pub run: RunSpec,
    /// The frozen reference policy; `None`: the starting policy.
    pub reference: Option<PathBuf>,
    /// The initial value model (a reward model directory); `None`: the
    /// reward's model, else the policy with a new head.
    pub value_model: Option<PathBuf>,
    /// JSONL: {"prompt": text or messages, "unsafe"?: bool}.
    pub prompts: PathBuf,
    pub reward: RewardSpec,
    /// The algorithm's settings (presets: [`PpoConfig::trl`], [`PpoConfig::llama2`]).
    pub ppo: PpoConfig,
}

/// Runs a PPO job on `dev`.
pub fn run<D: Dev>(job: &PpoJob, dev: &D) -> Result<Outcome> {
    let mut cfg = job.ppo.clone();
    let reward = job.reward.load(dev)?;
    let reference_dir = job.reference.as_ref().unwrap_or(&job.run.policy);
    let reference_ck = load_reference(reference_dir, dev)?;
    let ref_tok = Tokenizer::load(reference_dir)?;
    cfg.sampling.stop_tokens = stop_tokens(&reference_ck, &ref_tok);
    let reference = reference_ck.model;
    let r = &job.run;
    let resumed = if policy::out_dir::check_training(&r.out, r.resume, r.overwrite)? {
        ppo::load_checkpoint(&r.out, dev)?
    } else {
        None
    };
    let (mut models, state, tok) = match resumed {
        Some(c) => {
            eprintln!("resuming {}", r.out.display());
            (
                PpoModels {
                    actor: c.actor,
                    critic: c.critic,
                    reference,
                    files: c.files,
                },
                Some(c.state),
                Tokenizer::load(&r.out)?,
            )
        }
        None => {
            let (ck, tok) = load_policy(&r.policy, dev)?;
            let critic = match job.value_model.as_deref().or(job.reward.model_dir()) {
                Some(dir) => RewardModel::load_or_init(dir, dev, cfg.train.seed)?,
                None => RewardModel::from_policy(&r.policy, dev, cfg.train.seed)?,
            };
            let files = PolicyFiles::of(&ck);
            (
                PpoModels {
                    actor: ck.model,
                    critic,
                    reference,
                    files,
                },
                None,
                tok,
            )
        }
    };
    let prompts = read_prompts(&job.prompts, &tok)?;
    install_interrupt_handler();
    eprintln!(
        "ppo: {} prompts, {} episodes per iteration, {} iterations",
        prompts.len(),
        cfg.train.batch_size,
        cfg.iterations(prompts.len())
    );
    let o = ppo::train(
        &mut models,
        &reward,
        Some(&tok),
        &prompts,
        &cfg,
        &r.out,
        state,
    )?;
    let last = o
        .last
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let outcome = Outcome {
        finished: o.finished,
        steps: o.iterations,
        total_steps: o.total_iterations,
        last,
        eval: None,
    };
    if !o.finished {
        train_loop::stopped_early(o.iterations, o.total_iterations, &r.out)?;
        return Ok(outcome);
    }
    eprintln!(
        "last iteration: score {:.4}, kl {:.4}",
        o.last["objective/scores"].as_f64().unwrap_or(0.0),
        o.last["objective/kl"].as_f64().unwrap_or(0.0)
    );
    wrote(&r.out);
    Ok(outcome)
}
