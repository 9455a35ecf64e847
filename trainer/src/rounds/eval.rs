//! Evaluation of a policy on held-out prompts: gold reward (when the task has
//! one), reward-model score, KL to a reference, and win rate against a
//! baseline policy (judged by the gold reward, else by the reward model).
//!
//! One response per prompt is sampled at temperature 1 with a fixed seed
//! (the policy's own distribution, which is what PPO optimizes and what the
//! KL estimate needs); the KL is the mean over prompts of
//! `Σ_t logπ(y_t) − logπref(y_t)` on those samples (an unbiased estimate of
//! KL(π ‖ πref) per response). `rlhf eval` runs it from the command line;
//! rounds run it on their output.
use crate::data::{read_prompts, Prompt, Sequence};
use crate::logprobs::sequence_logprob_sums;
use crate::policy_io::load_policy;
use crate::reward::{Reward, Scored};
use anyhow::{bail, Result};
use clap::Args;
use policy::checkpoint::Checkpoint;
use policy::device::{DeviceKind, OnDevice};
use policy::generate::stop_tokens;
use policy::generate::{generate, Generation, SamplingConfig};
use policy::model::{Dev, Llama};
use policy::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What [`evaluate`] measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub prompts: usize,
    /// Mean gold reward of the policy's responses.
    pub gold_reward: Option<f64>,
    /// Mean reward-model score of the policy's responses.
    pub rm_score: Option<f64>,
    /// Mean per-response KL(π ‖ πref) estimate.
    pub kl: Option<f64>,
    /// Fraction of prompts where the policy's response beats the baseline's (ties count half).
    pub win_rate: Option<f64>,
    /// What judged the win rate: `gold` or `reward_model`.
    pub win_rate_judge: Option<String>,
    /// Mean response length in tokens.
    pub response_tokens: f64,
}

/// Responses of `model` to `prompts` at temperature 1.
pub fn sample<D: Dev>(
    model: &Llama<D>,
    prompts: &[Prompt],
    max_new_tokens: usize,
    stop_tokens: &[u32],
    seed: u64,
    batch: usize,
) -> Result<Vec<Generation>> {
    let cfg = SamplingConfig {
        max_new_tokens,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed,
        stop_tokens: stop_tokens.to_vec(),
    };
    let mut out = vec![];
    for (c, chunk) in prompts.chunks(batch.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        out.extend(generate(
            model,
            &ids,
            &SamplingConfig {
                seed: seed.wrapping_add(c as u64 * 0x9E37_79B9),
                ..cfg.clone()
            },
        )?);
    }
    Ok(out)
}

/// Gold rewards of responses (a function of the texts).
pub type GoldFn<'a> = &'a dyn Fn(&str, &str) -> f32;

/// Evaluation settings and judges.
pub struct EvalSetup<'a, D: Dev> {
    pub tok: &'a Tokenizer,
    pub stop_tokens: Vec<u32>,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub batch: usize,
    pub gold: Option<GoldFn<'a>>,
    pub reward: Option<&'a Reward<D>>,
    pub reference: Option<&'a Llama<D>>,
    pub baseline: Option<&'a Llama<D>>,
}

/// Per-response judgments, each when available.
struct Judged {
    gold: Option<Vec<f32>>,
    rm: Option<Vec<f32>>,
}

fn scores<D: Dev>(s: &EvalSetup<D>, prompts: &[Prompt], gens: &[Generation]) -> Result<Judged> {
    let texts: Vec<String> = gens
        .iter()
        .map(|g| s.tok.decode(&g.tokens, true))
        .collect::<Result<_>>()?;
    let gold = s.gold.map(|f| {
        prompts
            .iter()
            .zip(&texts)
            .map(|(p, t)| f(&crate::reward::prompt_text(&p.content), t))
            .collect()
    });
    let rm = match s.reward {
        Some(r) => {
            let sc: Vec<Scored> = prompts
                .iter()
                .zip(gens)
                .zip(&texts)
                .map(|((p, g), t)| Scored {
                    prompt: p,
                    response_ids: &g.tokens,
                    response_text: t,
                })
                .collect();
            Some(r.score(&sc, Some(s.tok))?)
        }
        None => None,
    };
    Ok(Judged { gold, rm })
}

fn mean(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64
}

/// Evaluates `policy` on `prompts`.
pub fn evaluate<D: Dev>(
    policy: &Llama<D>,
    prompts: &[Prompt],
    s: &EvalSetup<D>,
) -> Result<EvalReport> {
    if prompts.is_empty() {
        bail!("no prompts to evaluate on");
    }
    let gens = sample(
        policy,
        prompts,
        s.max_new_tokens,
        &s.stop_tokens,
        s.seed,
        s.batch,
    )?;
    let Judged { gold, rm } = scores(s, prompts, &gens)?;
    let mut r = EvalReport {
        prompts: prompts.len(),
        gold_reward: gold.as_deref().map(mean),
        rm_score: rm.as_deref().map(mean),
        response_tokens: gens.iter().map(|g| g.tokens.len() as f64).sum::<f64>()
            / gens.len() as f64,
        ..EvalReport::default()
    };
    if let Some(reference) = s.reference {
        let seqs: Vec<Sequence> = prompts
            .iter()
            .zip(&gens)
            .map(|(p, g)| Sequence::prompt_response(&p.ids, &g.tokens))
            .collect();
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let lp = sequence_logprob_sums(policy, &refs, s.batch, 1.0)?;
        let lr = sequence_logprob_sums(reference, &refs, s.batch, 1.0)?;
        r.kl =
            Some(lp.iter().zip(&lr).map(|(a, b)| (a - b) as f64).sum::<f64>() / seqs.len() as f64);
    }
    if let Some(baseline) = s.baseline {
        let bgens = sample(
            baseline,
            prompts,
            s.max_new_tokens,
            &s.stop_tokens,
            s.seed,
            s.batch,
        )?;
        let Judged {
            gold: bgold,
            rm: brm,
        } = scores(s, prompts, &bgens)?;
        let (mine, theirs, judge) = match (gold, bgold, rm, brm) {
            (Some(a), Some(b), _, _) => (a, b, "gold"),
            (_, _, Some(a), Some(b)) => (a, b, "reward_model"),
            _ => bail!("a win rate needs a gold reward or a reward model to judge"),
        };
        let wins: f64 = mine
            .iter()
            .zip(&theirs)
            .map(|(a, b)| {
                if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                }
            })
            .sum();
        r.win_rate = Some(wins / prompts.len() as f64);
        r.win_rate_judge = Some(judge.into());
    }
    Ok(r)
}

/// `rlhf eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The policy to evaluate.
    #[arg(long)]
    pub policy: PathBuf,
    /// Win rate against this policy.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// KL to this policy (e.g. the SFT model).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Score with this reward model (and judge the win rate with it when there is no gold reward).
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// A built-in task: its held-out prompts and gold reward (review, arithmetic).
    #[arg(long)]
    pub task: Option<String>,
    /// Held-out prompts (JSONL {"prompt": ...}) instead of the task's.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Number of task prompts.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the report here too (JSON).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

impl OnDevice for EvalArgs {
    fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
        eval_cmd(&self, dev)
    }
}

/// Runs `rlhf eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    a.device.dispatch(a)
}

fn eval_cmd<D: Dev>(a: &EvalArgs, dev: &D) -> Result<()> {
    let (ck, tok) = load_policy(&a.policy, dev)?;
    let task = a.task.as_deref().map(super::tasks::task).transpose()?;
    let prompts: Vec<Prompt> = match (&a.prompts, &task) {
        (Some(p), _) => read_prompts(p, &tok)?,
        (None, Some(t)) => super::tasks::eval_prompts(t.as_ref(), a.n, &tok)?,
        (None, None) => {
            bail!("give --task (its held-out prompts and gold reward) or --prompts FILE")
        }
    };
    let reward = a
        .reward_model
        .as_ref()
        .map(|p| Reward::model(p, dev, 64))
        .transpose()?;
    let reference = a
        .reference
        .as_ref()
        .map(|p| Checkpoint::load(p, dev))
        .transpose()?;
    let baseline = a
        .baseline
        .as_ref()
        .map(|p| Checkpoint::load(p, dev))
        .transpose()?;
    let gold_fn = |p: &str, r: &str| task.as_ref().map_or(0.0, |t| t.gold(p, r));
    let setup = EvalSetup {
        tok: &tok,
        stop_tokens: stop_tokens(&ck, &tok),
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        batch: 64,
        gold: task
            .as_ref()
            .map(|_| &gold_fn as &dyn Fn(&str, &str) -> f32),
        reward: reward.as_ref(),
        reference: reference.as_ref().map(|c| &c.model),
        baseline: baseline.as_ref().map(|c| &c.model),
    };
    let r = evaluate(&ck.model, &prompts, &setup)?;
    let text = serde_json::to_string_pretty(&r)?;
    if let Some(p) = &a.output {
        policy::fs_atomic::write_file_synced(p, text.as_bytes())?;
    }
    println!("{text}");
    Ok(())
}
