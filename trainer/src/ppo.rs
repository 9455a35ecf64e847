//! PPO (DESIGN §7; TRL's PPOTrainer and the Llama-2 recipe): the actor is the
//! policy, the critic a value model initialized from the reward model (a
//! scalar head on every position), with a frozen reference policy and a
//! frozen reward.
//!
//! Each iteration: (1) sample a response per prompt of the batch, keeping the
//! sampler's log-probs (with the sampling temperature) as the old ones, (2)
//! compute the reference log-probs and the values in no-gradient passes, (3)
//! score the responses (missing-EOS penalty), per-token rewards `−β·kl_t`
//! with the score added at the last response token, optional reward
//! whitening, GAE (γ, λ), advantage
//! whitening, (4) several epochs of shuffled minibatches with the clipped
//! policy loss and the clipped value loss (gradients accumulated over
//! micro-batches, one global-norm clip over both models), (5) the KL
//! controller update.
//!
//! Determinism: iteration `i` takes the prompts of step `i` of the shared
//! loop's data order, samples with a seed derived from `(seed, i)` and
//! shuffles minibatches with `(seed, i, epoch)`, so a run resumed from a
//! checkpoint computes what an uninterrupted one does.
use crate::data::{Prompt, Sequence};
use crate::logprobs::{token_logprobs, TargetBatch};
use crate::policy_io::PolicyFiles;
use crate::ppo_math::{gae, kl, token_rewards, whiten_rows, KlController, KlEstimator};
use crate::reward::{Reward, Scored};
use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use policy::config::DType;
use policy::fs_atomic::write_dir_atomic;
use policy::generate::{generate, FinishReason, SamplingConfig};
use policy::model::{Batch, Dev, Llama, T1, T2};
use policy::tokenizer::Tokenizer;
use policy::train::{AdamW, ParamTensors};
use policy::train_loop::{
    metrics_path, open_metrics, progress_bar, should_stop, step_examples, Fingerprint, LoopConfig,
};
use policy::train_state;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use reward_model::model::RewardModel;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Subdirectory of a PPO checkpoint holding the value model.
pub const VALUE_MODEL_DIR: &str = "value_model";

/// PPO settings. `train.batch_size` is the episodes per iteration,
/// `train.micro_batch` the rows per forward/backward, `train.max_steps` the
/// iterations (else `train.epochs` passes over the prompts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PpoConfig {
    pub train: LoopConfig,
    /// Minibatches per epoch over an iteration's episodes (one optimizer step each).
    pub mini_batches: usize,
    /// Passes over each iteration's episodes.
    pub ppo_epochs: usize,
    /// Sampling of rollouts; log-probs use its temperature. Top-k/top-p stay off.
    #[serde(skip, default)]
    pub sampling: SamplingConfig,
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub kl: KlController,
    pub kl_estimator: KlEstimator,
    /// Policy ratio clip ε.
    pub cliprange: f32,
    /// Value clip around the old values.
    pub cliprange_value: f32,
    pub vf_coef: f32,
    pub gamma: f32,
    pub lam: f32,
    pub whiten_rewards: bool,
    /// Subtracted from the score of a response that did not end with a stop token.
    pub missing_eos_penalty: Option<f32>,
    /// Clip the global gradient norm of policy and value model together at
    /// `train.max_grad_norm` (Llama-2 clips at 1.0; TRL's PPO trainer does not).
    #[serde(default)]
    pub clip_grad: bool,
    /// Peak learning rate of the value model, on the policy's schedule
    /// (None: the policy's, as TRL's one optimizer over both).
    #[serde(default)]
    pub vf_lr: Option<f32>,
}

impl PpoConfig {
    /// TRL's PPOConfig defaults (β 0.05 k1, ε 0.2, value clip 0.2, vf 0.1,
    /// γ 1, λ 0.95, 4 epochs, 1 minibatch, temperature 0.7, lr 3e-6, linear decay).
    pub fn trl() -> Self {
        PpoConfig {
            train: LoopConfig {
                lr: 3e-6,
                batch_size: 64,
                micro_batch: 8,
                schedule: policy::train_loop::ScheduleKind::Linear,
                warmup_ratio: 0.0,
                adamw: policy::train::AdamWConfig {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                },
                log_every: 1,
                ..LoopConfig::default()
            },
            mini_batches: 1,
            ppo_epochs: 4,
            sampling: SamplingConfig::default(),
            temperature: 0.7,
            max_new_tokens: 53,
            kl: KlController {
                beta: 0.05,
                adaptive: None,
            },
            kl_estimator: KlEstimator::K1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
            missing_eos_penalty: None,
            clip_grad: false,
            vf_lr: None,
        }
    }

    /// The Llama-2 paper's settings: AdamW β2 0.95, eps 1e-5, wd 0.1, clip 1.0,
    /// constant lr 1e-6, β 0.01, batch 512 with minibatches of 64, one epoch,
    /// temperature 1.
    pub fn llama2() -> Self {
        let t = Self::trl();
        PpoConfig {
            train: LoopConfig {
                lr: 1e-6,
                batch_size: 512,
                schedule: policy::train_loop::ScheduleKind::Constant,
                adamw: policy::train::AdamWConfig::default(),
                ..t.train
            },
            mini_batches: 8,
            ppo_epochs: 1,
            temperature: 1.0,
            clip_grad: true,
            kl: KlController {
                beta: 0.01,
                adaptive: None,
            },
            ..t
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if self.mini_batches == 0 || self.ppo_epochs == 0 || self.max_new_tokens == 0 {
            bail!("minibatches, PPO epochs and max new tokens must be at least 1");
        }
        if self.mini_batches > self.train.batch_size {
            bail!(
                "{} minibatches cannot split {} episodes",
                self.mini_batches,
                self.train.batch_size
            );
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "PPO samples with a temperature > 0 (log-probs use it), got {}",
                self.temperature
            );
        }
        if self.vf_lr.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            bail!("the value model's learning rate must be a positive number");
        }
        let nonneg = |x: f32| x.is_finite() && x >= 0.0;
        if !(nonneg(self.kl.beta)
            && nonneg(self.cliprange)
            && nonneg(self.cliprange_value)
            && nonneg(self.vf_coef))
        {
            bail!("β, the clip ranges and the value coefficient must be >= 0");
        }
        if let Some((target, horizon)) = self.kl.adaptive {
            if !(target > 0.0 && horizon > 0.0) {
                bail!("the adaptive KL target and horizon must be > 0");
            }
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            bail!("γ and λ must be in [0, 1]");
        }
        Ok(())
    }

    /// Iterations for `n` prompts.
    pub fn iterations(&self, n: usize) -> u64 {
        self.train.total_steps(n)
    }
}

/// The models PPO trains and consults.
pub struct PpoModels<D: Dev> {
    pub actor: Llama<D>,
    pub critic: RewardModel<D>,
    /// Frozen reference policy.
    pub reference: Llama<D>,
    pub files: PolicyFiles,
}

/// The optimizers and progress of a run (to resume).
pub struct PpoState<D: Dev> {
    pub actor_opt: AdamW<D>,
    pub critic_opt: AdamW<D>,
    pub progress: Value,
}

/// One iteration's episodes and what PPO derives from them.
struct Rollout {
    seqs: Vec<Sequence>,
    old_logp: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
}

/// Per-position values `(rows·seq,)` of the critic.
fn token_values<D: Dev, T: Tape<f32, D> + Merge<NoneTape>>(
    critic: &RewardModel<D>,
    embed: T2<D, T>,
    b: &Batch,
) -> Result<T1<D, T>> {
    let h = critic.backbone.hidden(embed, b, None)?;
    let n = b.batch * b.seq;
    Ok(h.matmul(
        critic
            .score
            .clone()
            .permute::<(usize, usize), Axes2<1, 0>>(),
    )
    .reshape_like(&(n,)))
}

/// The values at the trained positions of each row, in order.
fn per_row(values: &[f32], tb: &TargetBatch) -> Vec<Vec<f32>> {
    let seq = tb.batch.seq;
    (0..tb.rows())
        .map(|r| {
            (0..seq)
                .filter(|&i| tb.weights[r * seq + i] > 0.0)
                .map(|i| values[r * seq + i])
                .collect()
        })
        .collect()
}

/// Per-row values at trained positions, laid out back onto the batch grid.
fn on_grid(rows: &[&Vec<f32>], tb: &TargetBatch) -> Vec<f32> {
    let seq = tb.batch.seq;
    let mut out = vec![0f32; tb.rows() * seq];
    for (r, vals) in rows.iter().enumerate() {
        let mut it = vals.iter();
        for i in 0..seq {
            if tb.weights[r * seq + i] > 0.0 {
                out[r * seq + i] = *it.next().expect("one value per trained position");
            }
        }
    }
    out
}

/// PPO over `prompts` (`tok` decodes responses for programmatic rewards), saving to `out` (the policy as a HF directory with
/// `trainer_state/`, the critic in `out/value_model/`). Metrics go to
/// `OUT.metrics.jsonl`, one line per iteration.
pub fn train<D: Dev>(
    m: &mut PpoModels<D>,
    reward: &Reward<D>,
    tok: Option<&Tokenizer>,
    prompts: &[Prompt],
    cfg: &PpoConfig,
    out: &Path,
    resume: Option<PpoState<D>>,
) -> Result<PpoOutcome> {
    cfg.validate()?;
    if prompts.is_empty() {
        bail!("no prompts");
    }
    crate::reward::check_vocab(reward, m.actor.cfg.vocab_size)?;
    if tok.is_none() && matches!(reward, Reward::Function(_)) {
        bail!("a programmatic reward reads text: PPO needs the tokenizer to decode responses");
    }
    if m.critic.backbone.cfg.vocab_size != m.actor.cfg.vocab_size {
        bail!(
            "the value model's vocabulary ({}) differs from the policy's ({})",
            m.critic.backbone.cfg.vocab_size,
            m.actor.cfg.vocab_size
        );
    }
    let n = prompts.len();
    let total = cfg.iterations(n);
    let steps_per_iter = (cfg.ppo_epochs * cfg.mini_batches) as u64;
    let schedule = cfg.train.schedule(total * steps_per_iter);
    let mut fp = Fingerprint::default();
    prompts.iter().for_each(|p| fp.feed_tokens(&p.ids));
    let identity = json!({"stage": "ppo", "data": fp.hex(), "batch_size": cfg.train.batch_size, "seed": cfg.train.seed, "total_steps": total});
    let (mut actor_opt, mut critic_opt, mut kl_ctl, start) = match resume {
        None => (
            AdamW::new(&m.actor, cfg.train.adamw),
            AdamW::new(&m.critic, cfg.train.adamw),
            cfg.kl,
            0,
        ),
        Some(s) => {
            for (k, want) in identity.as_object().expect("object") {
                let got = s.progress.get(k).unwrap_or(&Value::Null);
                if got != want {
                    bail!("cannot resume: the checkpoint's {k} is {got} but this run's is {want} (the same prompts, batch size, seed and length are needed for an exact resume)");
                }
            }
            let kl: KlController = serde_json::from_value(s.progress["kl_controller"].clone())
                .context("checkpoint has no KL controller state")?;
            let it = s.progress["step"]
                .as_u64()
                .context("checkpoint has no step")?;
            (s.actor_opt, s.critic_opt, kl, it)
        }
    };
    let mut metrics = open_metrics(&metrics_path(out), start)?;
    let bar = progress_bar(total, start, cfg.train.progress, "iterations");
    let progress_json = |it: u64, kl: &KlController| {
        let mut p = identity.clone();
        let o = p.as_object_mut().expect("object");
        o.insert("step".into(), json!(it));
        o.insert(
            "kl_controller".into(),
            serde_json::to_value(kl).unwrap_or(Value::Null),
        );
        o.insert(
            "config".into(),
            serde_json::to_value(cfg).unwrap_or(Value::Null),
        );
        p
    };
    let mut last = serde_json::Map::new();
    for it in start..total {
        if cfg.train.stop_after.is_some_and(|s| it >= s) || should_stop() {
            save(
                m,
                &actor_opt,
                &critic_opt,
                &progress_json(it, &kl_ctl),
                out,
                DType::F32,
            )?;
            bar.abandon_with_message("stopped; resume to continue");
            return Ok(PpoOutcome {
                iterations: it,
                total_iterations: total,
                finished: false,
                last: Value::Object(last),
            });
        }
        let t_start = Instant::now();
        let batch_prompts: Vec<&Prompt> =
            step_examples(it, cfg.train.batch_size, n, cfg.train.seed)
                .into_iter()
                .map(|i| &prompts[i])
                .collect();
        // (1) rollouts
        let ids: Vec<Vec<u32>> = batch_prompts.iter().map(|p| p.ids.clone()).collect();
        let sc = SamplingConfig {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_k: 0,
            top_p: 1.0,
            seed: cfg.train.seed.wrapping_mul(0x9E37_79B9).wrapping_add(it),
            stop_tokens: cfg.sampling.stop_tokens.clone(),
        };
        let mut gens = vec![];
        for chunk in ids.chunks(cfg.train.micro_batch.max(1) * 4) {
            let offset = gens.len() as u64;
            gens.extend(generate(
                &m.actor,
                chunk,
                &SamplingConfig {
                    seed: sc.seed.wrapping_add(offset.wrapping_mul(0x2545_F491)),
                    ..sc.clone()
                },
            )?);
        }
        let t_gen = t_start.elapsed().as_secs_f64();
        // the reward reads the text (a function, or a model by the joint tokenization)
        let texts: Vec<String> = match tok {
            Some(tok) => gens
                .iter()
                .map(|g| tok.decode(&g.tokens, true))
                .collect::<Result<_>>()?,
            _ => vec![String::new(); gens.len()],
        };
        let scored: Vec<Scored> = batch_prompts
            .iter()
            .zip(&gens)
            .zip(&texts)
            .map(|((p, g), t)| Scored {
                prompt: p,
                response_ids: &g.tokens,
                response_text: t,
            })
            .collect();
        let mut scores = reward.score(&scored, tok)?;
        let eos_missing: Vec<bool> = gens
            .iter()
            .map(|g| g.finish_reason != FinishReason::Stop)
            .collect();
        if let Some(pen) = cfg.missing_eos_penalty {
            for (s, &miss) in scores.iter_mut().zip(&eos_missing) {
                if miss {
                    *s -= pen;
                }
            }
        }
        // (2) old log-probs, reference log-probs, values
        let seqs: Vec<Sequence> = batch_prompts
            .iter()
            .zip(&gens)
            .map(|(p, g)| Sequence::prompt_response(&p.ids, &g.tokens))
            .collect();
        let pad = m.actor.cfg.pad_token_id.unwrap_or(0);
        // The sampler's log-probs are the old policy's (softmax(logits/T), no
        // top-k/top-p), so the rollout needs no extra policy forward (as TRL).
        let old_logp: Vec<Vec<f32>> = gens.iter().map(|g| g.logprobs.clone()).collect();
        let (mut ref_logp, mut old_values) = (vec![], vec![]);
        for chunk in seqs.chunks(cfg.train.micro_batch) {
            let rows: Vec<&Sequence> = chunk.iter().collect();
            let tb = TargetBatch::new(&rows, pad)?;
            ref_logp.extend(per_row(
                &token_logprobs(
                    &m.reference,
                    m.reference.embed_tokens.clone(),
                    &tb,
                    cfg.temperature,
                )?
                .as_vec(),
                &tb,
            ));
            old_values.extend(per_row(
                &token_values(&m.critic, m.critic.backbone.embed_tokens.clone(), &tb.batch)?
                    .as_vec(),
                &tb,
            ));
        }
        // (3) rewards, advantages, returns
        let kls: Vec<Vec<f32>> = old_logp
            .iter()
            .zip(&ref_logp)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| kl(cfg.kl_estimator, x, y))
                    .collect()
            })
            .collect();
        let mut rewards: Vec<Vec<f32>> = kls
            .iter()
            .zip(&scores)
            .map(|(k, &s)| token_rewards(k, kl_ctl.beta, s))
            .collect();
        if cfg.whiten_rewards {
            whiten_rows(&mut rewards, false);
        }
        let raw_adv: Vec<Vec<f32>> = rewards
            .iter()
            .zip(&old_values)
            .map(|(r, v)| gae(r, v, cfg.gamma, cfg.lam))
            .collect();
        let returns: Vec<Vec<f32>> = raw_adv
            .iter()
            .zip(&old_values)
            .map(|(a, v)| a.iter().zip(v).map(|(x, y)| x + y).collect())
            .collect();
        let mut advantages = raw_adv;
        whiten_rows(&mut advantages, true);
        let rollout = Rollout {
            seqs,
            old_logp,
            old_values,
            advantages,
            returns,
        };
        // scoring: the reward, reference log-probs, values and advantages
        let t_score = t_start.elapsed().as_secs_f64() - t_gen;
        // (4) updates
        let t_train0 = Instant::now();
        let mut stats = UpdateStats::default();
        let bsz = rollout.seqs.len();
        let mb = bsz.div_ceil(cfg.mini_batches);
        for epoch in 0..cfg.ppo_epochs {
            let mut order: Vec<usize> = (0..bsz).collect();
            order.shuffle(&mut StdRng::seed_from_u64(
                cfg.train.seed ^ (it.wrapping_mul(0x1000_0000_01B3)).wrapping_add(epoch as u64 + 1),
            ));
            for minibatch in order.chunks(mb) {
                let lr = cfg.train.lr * schedule.factor(actor_opt.step);
                update(
                    m,
                    &mut actor_opt,
                    &mut critic_opt,
                    &rollout,
                    minibatch,
                    cfg,
                    lr,
                    &mut stats,
                )?;
            }
        }
        let t_train = t_train0.elapsed().as_secs_f64();
        // (5) KL controller and metrics
        let seq_kl: Vec<f32> = kls.iter().map(|k| k.iter().sum()).collect();
        let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len().max(1) as f64;
        let mean_kl = mean(&seq_kl);
        let entropy: Vec<f32> = rollout
            .old_logp
            .iter()
            .map(|l| -l.iter().sum::<f32>())
            .collect();
        let non_score: Vec<f32> = seq_kl.iter().map(|k| -kl_ctl.beta * k).collect();
        let beta_used = kl_ctl.beta;
        kl_ctl.update(mean_kl as f32, bsz);
        let elapsed = t_start.elapsed().as_secs_f64();
        let done = it + 1;
        let line = json!({
            "step": done,
            "episode": done * cfg.train.batch_size as u64,
            "epoch": (done * cfg.train.batch_size as u64) as f64 / n as f64,
            "lr": cfg.train.lr * schedule.factor(actor_opt.step.saturating_sub(1)),
            "objective/kl": mean_kl,
            "objective/entropy": mean(&entropy),
            "objective/non_score_reward": mean(&non_score),
            "objective/rlhf_reward": mean(&scores) + mean(&non_score),
            "objective/scores": mean(&scores),
            "policy/approxkl_avg": stats.mean("approxkl"),
            "policy/clipfrac_avg": stats.mean("clipfrac"),
            "loss/policy_avg": stats.mean("pg_loss"),
            "loss/value_avg": stats.mean("vf_loss"),
            "val/clipfrac_avg": stats.mean("vf_clipfrac"),
            "val/ratio": stats.mean("ratio"),
            "val/num_eos_tokens": eos_missing.iter().filter(|&&x| !x).count(),
            "response_length": mean(&rollout.old_logp.iter().map(|l| l.len() as f32).collect::<Vec<_>>()),
            "kl_coef": beta_used,
            "grad_norm": stats.mean("grad_norm"),
            "eps": bsz as f64 / elapsed.max(1e-9),
            "time/generate_s": t_gen,
            "time/score_s": t_score,
            "time/train_s": t_train,
        });
        writeln!(metrics, "{line}")?;
        metrics.flush()?;
        bar.set_message(format!("score {:.3} kl {:.3}", mean(&scores), mean_kl));
        bar.inc(1);
        last = line.as_object().cloned().unwrap_or_default();
        if cfg.train.save_every > 0 && done % cfg.train.save_every == 0 && done != total {
            save(
                m,
                &actor_opt,
                &critic_opt,
                &progress_json(done, &kl_ctl),
                out,
                DType::F32,
            )?;
        }
    }
    bar.finish_and_clear();
    save(
        m,
        &actor_opt,
        &critic_opt,
        &progress_json(total, &kl_ctl),
        out,
        cfg.train.dtype,
    )?;
    Ok(PpoOutcome {
        iterations: total,
        total_iterations: total,
        finished: true,
        last: Value::Object(last),
    })
}

/// What a PPO run did.
#[derive(Clone, Debug)]
pub struct PpoOutcome {
    pub iterations: u64,
    pub total_iterations: u64,
    /// False when stopped early (interrupt or `stop_after`); resume to continue.
    pub finished: bool,
    /// The last iteration's metrics line.
    pub last: Value,
}

#[derive(Default)]
struct UpdateStats(std::collections::BTreeMap<&'static str, (f64, f64)>);

impl UpdateStats {
    fn add(&mut self, k: &'static str, sum: f64, n: f64) {
        let e = self.0.entry(k).or_default();
        e.0 += sum;
        e.1 += n;
    }
    fn mean(&self, k: &str) -> f64 {
        self.0
            .get(k)
            .map_or(0.0, |&(s, n)| if n > 0.0 { s / n } else { 0.0 })
    }
}

/// One optimizer step of both models on a minibatch of episodes.
#[allow(clippy::too_many_arguments)]
fn update<D: Dev>(
    m: &mut PpoModels<D>,
    actor_opt: &mut AdamW<D>,
    critic_opt: &mut AdamW<D>,
    r: &Rollout,
    minibatch: &[usize],
    cfg: &PpoConfig,
    lr: f32,
    stats: &mut UpdateStats,
) -> Result<()> {
    let tokens: usize = minibatch.iter().map(|&i| r.old_logp[i].len()).sum();
    let scale = 1.0 / tokens.max(1) as f32;
    let (eps, cv) = (cfg.cliprange, cfg.cliprange_value);
    let pad = m.actor.cfg.pad_token_id.unwrap_or(0);
    let (mut ga, mut gc): (Option<ParamTensors<D>>, Option<ParamTensors<D>>) = (None, None);
    for micro in minibatch.chunks(cfg.train.micro_batch) {
        let rows: Vec<&Sequence> = micro.iter().map(|&i| &r.seqs[i]).collect();
        let tb = TargetBatch::new(&rows, pad)?;
        let len = tb.rows() * tb.batch.seq;
        let dev = m.actor.dev.clone();
        let grid = |src: &Vec<Vec<f32>>| {
            dev.tensor_from_vec(
                on_grid(&micro.iter().map(|&i| &src[i]).collect::<Vec<_>>(), &tb),
                (len,),
            )
        };
        let w = dev.tensor_from_vec(tb.weights.clone(), (len,));
        let (old, adv, old_v, ret) = (
            grid(&r.old_logp),
            grid(&r.advantages),
            grid(&r.old_values),
            grid(&r.returns),
        );
        // policy: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), mean over response tokens
        let new = token_logprobs(
            &m.actor,
            m.actor.embed_tokens.trace(Gradients::leaky()),
            &tb,
            cfg.temperature,
        )?;
        let new_host = new.as_vec();
        let adv_values = adv.as_vec();
        let ratio = (new - old.clone()).exp();
        let pg1 = ratio.with_empty_tape() * adv.clone().negate();
        let pg2 = ratio.clamp(1.0 - eps, 1.0 + eps) * adv.negate();
        let pg = pg1.maximum(pg2);
        let pg_host = pg.as_vec();
        let loss = (pg * w.clone()).sum::<Rank0, _>() * scale;
        let mut grads = loss.backward();
        let g = ParamTensors::from_backward(&m.actor, &mut grads)?;
        match &mut ga {
            None => ga = Some(g),
            Some(a) => a.add(&g),
        }
        // value: 0.5·max((V − R)², (Vclip − R)²), Vclip = V_old + clip(V − V_old, ±cv)
        let v = token_values(
            &m.critic,
            m.critic.backbone.embed_tokens.trace(Gradients::leaky()),
            &tb.batch,
        )?;
        let v_host = v.as_vec();
        let vclip = (v.with_empty_tape() - old_v.clone()).clamp(-cv, cv) + old_v.clone();
        let vf1 = (v - ret.clone()).square();
        let vf2 = (vclip - ret.clone()).square();
        let vf = vf1.maximum(vf2) * 0.5;
        let vf_host = vf.as_vec();
        let vloss = (vf * w.clone()).sum::<Rank0, _>() * (scale * cfg.vf_coef);
        let mut vgrads = vloss.backward();
        let g = ParamTensors::from_backward(&m.critic, &mut vgrads)?;
        match &mut gc {
            None => gc = Some(g),
            Some(a) => a.add(&g),
        }
        // statistics over the response tokens
        let (oldh, oldvh, reth) = (old.as_vec(), old_v.as_vec(), ret.as_vec());
        let adv_host = adv_values;
        for i in 0..len {
            if tb.weights[i] == 0.0 {
                continue;
            }
            let d = (new_host[i] - oldh[i]) as f64;
            let rho = d.exp();
            stats.add("approxkl", 0.5 * d * d, 1.0);
            let clip = crate::ppo_math::clipped(adv_host[i] as f64, rho, eps as f64);
            stats.add("clipfrac", clip as u8 as f64, 1.0);
            stats.add("ratio", rho, 1.0);
            stats.add("pg_loss", pg_host[i] as f64, 1.0);
            stats.add("vf_loss", vf_host[i] as f64, 1.0);
            let clipped = (v_host[i] - oldvh[i]).clamp(-cv, cv) + oldvh[i];
            stats.add(
                "vf_clipfrac",
                ((clipped - reth[i]).powi(2) > (v_host[i] - reth[i]).powi(2)) as u8 as f64,
                1.0,
            );
        }
    }
    let (mut ga, mut gc) = (
        ga.context("empty minibatch")?,
        gc.context("empty minibatch")?,
    );
    // one global norm over both models, as a single optimizer over both would clip
    let norm = (ga.global_norm().powi(2) + gc.global_norm().powi(2)).sqrt();
    if !norm.is_finite() {
        bail!("the gradient norm is {norm}; lower the learning rate");
    }
    if cfg.clip_grad && norm > cfg.train.max_grad_norm {
        let c = cfg.train.max_grad_norm / (norm + 1e-6);
        ga.scale(c);
        gc.scale(c);
    }
    stats.add("grad_norm", norm as f64, 1.0);
    actor_opt.update(&mut m.actor, &ga, lr);
    let vf_lr = match cfg.vf_lr {
        Some(v) => v * lr / cfg.train.lr,
        None => lr,
    };
    critic_opt.update(&mut m.critic, &gc, vf_lr);
    Ok(())
}

/// Saves actor, critic, both optimizers and the progress atomically.
fn save<D: Dev>(
    m: &PpoModels<D>,
    actor_opt: &AdamW<D>,
    critic_opt: &AdamW<D>,
    progress: &Value,
    out: &Path,
    dtype: DType,
) -> Result<()> {
    write_dir_atomic(out, |tmp| {
        m.files.write_into(&m.actor, tmp, dtype)?;
        train_state::save(tmp, &m.actor, actor_opt, progress)?;
        let vdir = tmp.join(VALUE_MODEL_DIR);
        std::fs::create_dir_all(&vdir)?;
        // the value model stays f32: it is only used to continue training
        m.critic.write_into(&vdir, DType::F32)?;
        train_state::save(&vdir, &m.critic, critic_opt, &json!({}))
    })
    .with_context(|| format!("cannot save the PPO checkpoint to {}", out.display()))
}

/// A saved PPO run: actor, critic, the policy's files, optimizers and progress.
pub struct PpoCheckpoint<D: Dev> {
    pub actor: Llama<D>,
    pub critic: RewardModel<D>,
    pub files: PolicyFiles,
    pub state: PpoState<D>,
}

/// Loads the actor, critic and optimizers of a run saved in `out` (None if
/// `out` holds no training state). The reference is loaded by the caller.
pub fn load_checkpoint<D: Dev>(out: &Path, dev: &D) -> Result<Option<PpoCheckpoint<D>>> {
    if !train_state::exists(out) {
        return Ok(None);
    }
    let ck = policy::checkpoint::Checkpoint::load(out, dev)?;
    let critic = RewardModel::load(&out.join(VALUE_MODEL_DIR), dev)
        .with_context(|| format!("{} has no value model", out.display()))?;
    let (actor_opt, progress) = train_state::load(out, &ck.model, dev)?;
    let (critic_opt, _) = train_state::load(&out.join(VALUE_MODEL_DIR), &critic, dev)?;
    let files = PolicyFiles::of(&ck);
    Ok(Some(PpoCheckpoint {
        actor: ck.model,
        critic,
        files,
        state: PpoState {
            actor_opt,
            critic_opt,
            progress,
        },
    }))
}
