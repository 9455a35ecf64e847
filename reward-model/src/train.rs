//! Reward-model training as a stage of the shared loop
//! (`policy::train_loop`): AdamW (β1 0.9, β2 0.95, wd 0.1), cosine schedule
//! to 10% with 3% warmup, global-norm clipping at 1.0, micro-batches with
//! gradient accumulation, a held-out split, metrics as JSONL with a progress
//! bar, checkpoints with exact resume, Ctrl-C, and the reward normalization
//! fitted at the end.
use crate::data::EncodedPair;
use crate::loss::{bt_loss, pairwise_loss_tensor, Strength};
use crate::model::{Normalization, RewardModel};
use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use policy::config::DType;
use policy::fs_atomic::write_file_synced;
use policy::model::{Batch, Dev};
use policy::train::{AdamW, AdamWConfig, ParamTensors};
use policy::train_loop::{self, Fingerprint, LoopConfig, Metrics, ScheduleKind, Stage};
use policy::train_state;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Training hyper-parameters (defaults: Llama-2's RM recipe where it has one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate (Llama-2: 1e-5 for the 70B RM, 5e-6 otherwise).
    pub lr: f32,
    /// Pairs per optimizer step.
    pub batch_size: usize,
    /// Pairs per forward/backward pass; gradients of the micro-batches of a
    /// step are summed (each scaled by 1/batch).
    pub micro_batch: usize,
    /// Passes over the training pairs (Llama-2: 1; more overfits).
    pub epochs: f32,
    /// Overrides the number of optimizer steps `epochs` implies.
    pub max_steps: Option<u64>,
    /// Fraction of steps of linear warmup.
    pub warmup_ratio: f32,
    /// The cosine schedule ends at this fraction of the peak.
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    /// Shape of the schedule after warmup (Llama-2: cosine).
    #[serde(default)]
    pub schedule: ScheduleKind,
    pub adamw: AdamWConfig,
    /// Weight `c` of the centering term `c·mean((r_c + r_r)²)`; 0 = off.
    pub centering: f32,
    /// Seed of the data order and the held-out split.
    pub seed: u64,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Evaluate on the held-out pairs every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Save a resumable checkpoint every this many steps (0 = only at the end).
    pub save_every: u64,
    /// Stop (after saving a checkpoint) once this many steps are done, as an
    /// interruption would; the schedule still spans the whole run.
    pub stop_after: Option<u64>,
    /// Rows per forward pass when evaluating and fitting the normalization.
    pub eval_batch: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Storage dtype of the saved model (not part of the recorded config).
    #[serde(skip, default = "f32_dtype")]
    pub dtype: DType,
    /// Where the pairs came from (files, server, held-out split), saved with
    /// the checkpoint so `--resume` can read the same data again.
    #[serde(default)]
    pub sources: Value,
}

fn f32_dtype() -> DType {
    DType::F32
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-5,
            batch_size: 32,
            micro_batch: 8,
            epochs: 1.0,
            max_steps: None,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            schedule: ScheduleKind::Cosine,
            adamw: AdamWConfig::default(),
            centering: 0.0,
            seed: 0,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            stop_after: None,
            eval_batch: 16,
            progress: true,
            dtype: DType::F32,
            sources: Value::Null,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.eval_batch == 0 {
            bail!("batch sizes must be at least 1");
        }
        if !(self.centering.is_finite() && self.centering >= 0.0) {
            bail!("centering must be >= 0, got {}", self.centering);
        }
        self.loop_config().validate()
    }

    /// Total optimizer steps for `n` training pairs.
    pub fn total_steps(&self, n: usize) -> u64 {
        self.loop_config().total_steps(n)
    }

    /// Reward-model settings from the shared loop's, with the centering weight and evaluation batch.
    pub fn from_loop(l: &LoopConfig, centering: f32, eval_batch: usize) -> TrainConfig {
        TrainConfig {
            lr: l.lr,
            batch_size: l.batch_size,
            micro_batch: l.micro_batch,
            epochs: l.epochs,
            max_steps: l.max_steps,
            warmup_ratio: l.warmup_ratio,
            min_lr_ratio: l.min_lr_ratio,
            max_grad_norm: l.max_grad_norm,
            schedule: l.schedule,
            adamw: l.adamw,
            centering,
            seed: l.seed,
            log_every: l.log_every,
            eval_every: l.eval_every,
            save_every: l.save_every,
            stop_after: l.stop_after,
            eval_batch,
            progress: l.progress,
            dtype: l.dtype,
            sources: Value::Null,
        }
    }

    /// The shared loop's settings.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            lr: self.lr,
            batch_size: self.batch_size,
            micro_batch: self.micro_batch,
            epochs: self.epochs,
            max_steps: self.max_steps,
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            min_lr_ratio: self.min_lr_ratio,
            max_grad_norm: self.max_grad_norm,
            adamw: self.adamw,
            seed: self.seed,
            log_every: self.log_every,
            eval_every: self.eval_every,
            save_every: self.save_every,
            stop_after: self.stop_after,
            progress: self.progress,
            dtype: self.dtype,
        }
    }
}

/// Splits pairs into training and held-out sets by comparison (`group`), so
/// pairs expanded from one ranking never straddle the split. Deterministic in `seed`.
pub fn split_held_out(
    pairs: Vec<EncodedPair>,
    fraction: f32,
    seed: u64,
) -> Result<(Vec<EncodedPair>, Vec<EncodedPair>)> {
    split_by_group(pairs, |p| p.group.clone(), fraction, seed)
}

/// Splits `items` into (train, held-out) with about `fraction` of the groups
/// held out, whole: items of one group (e.g. the pairs of one comparison or
/// prompt) never land on both sides, so held-out metrics are not inflated by
/// leakage. Deterministic in `seed`.
pub fn split_by_group<T, K: Ord + Clone + std::hash::Hash>(
    items: Vec<T>,
    group: impl Fn(&T) -> K,
    fraction: f32,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) {
        bail!("held-out fraction must be in [0, 1), got {fraction}");
    }
    let mut groups: Vec<K> = items.iter().map(&group).collect();
    groups.sort();
    groups.dedup();
    groups.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed_5917));
    let n_eval = (groups.len() as f64 * fraction as f64).round() as usize;
    let eval_groups: std::collections::HashSet<&K> = groups[..n_eval].iter().collect();
    let (eval, train): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|p| eval_groups.contains(&group(p)));
    Ok((train, eval))
}

/// Accuracy of one strength level.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LevelStats {
    pub count: usize,
    pub accuracy: f64,
}

/// One calibration bin: pairs whose predicted winner has probability
/// `σ(|r_c − r_r|)` in `[lo, hi)`, and how often that winner is the chosen one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub confidence: f64,
    pub accuracy: f64,
}

/// Evaluation of a reward model on preference pairs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub pairs: usize,
    /// Mean BT loss with the pairs' margins (no centering term).
    pub loss: f64,
    /// Fraction with `r_c > r_r`.
    pub accuracy: f64,
    /// Mean `r_c − r_r`.
    pub mean_margin: f64,
    /// Accuracy per labeled strength (`unlabeled` for pairs without one).
    pub by_strength: BTreeMap<String, LevelStats>,
    /// Reliability bins over the predicted winner's probability (0.5–1).
    pub calibration: Vec<CalibrationBin>,
    /// Expected calibration error over those bins.
    pub ece: f64,
}

/// Raw rewards of chosen and rejected sides.
pub fn pair_scores<D: Dev>(
    rm: &RewardModel<D>,
    pairs: &[EncodedPair],
    batch: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let c: Vec<Vec<u32>> = pairs.iter().map(|p| p.chosen.clone()).collect();
    let r: Vec<Vec<u32>> = pairs.iter().map(|p| p.rejected.clone()).collect();
    Ok((rm.raw_scores(&c, batch)?, rm.raw_scores(&r, batch)?))
}

/// Loss, accuracy (overall and by strength), mean margin and calibration.
pub fn evaluate<D: Dev>(
    rm: &RewardModel<D>,
    pairs: &[EncodedPair],
    batch: usize,
) -> Result<EvalReport> {
    if pairs.is_empty() {
        bail!("no pairs to evaluate");
    }
    let (c, r) = pair_scores(rm, pairs, batch)?;
    let n = pairs.len() as f64;
    let mut loss = 0.0;
    let mut correct = 0usize;
    let mut margin = 0.0;
    let mut levels: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    const BINS: usize = 5;
    let mut bins = [(0usize, 0f64, 0usize); BINS];
    for (i, p) in pairs.iter().enumerate() {
        let d = c[i] as f64 - r[i] as f64;
        loss += bt_loss(c[i] as f64, r[i] as f64, p.margin as f64);
        let ok = d > 0.0;
        correct += ok as usize;
        margin += d;
        let level = p
            .strength
            .map(Strength::as_str)
            .unwrap_or("unlabeled")
            .to_string();
        let e = levels.entry(level).or_default();
        e.0 += 1;
        e.1 += ok as usize;
        let conf = 1.0 / (1.0 + (-d.abs()).exp());
        let b = (((conf - 0.5) / 0.5 * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += conf;
        bins[b].2 += ok as usize;
    }
    let calibration: Vec<CalibrationBin> = bins
        .iter()
        .enumerate()
        .map(|(i, &(count, conf, ok))| CalibrationBin {
            lo: 0.5 + 0.5 * i as f64 / BINS as f64,
            hi: 0.5 + 0.5 * (i + 1) as f64 / BINS as f64,
            count,
            confidence: if count > 0 { conf / count as f64 } else { 0.0 },
            accuracy: if count > 0 {
                ok as f64 / count as f64
            } else {
                0.0
            },
        })
        .collect();
    let ece = calibration
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum();
    Ok(EvalReport {
        pairs: pairs.len(),
        loss: loss / n,
        accuracy: correct as f64 / n,
        mean_margin: margin / n,
        by_strength: levels
            .into_iter()
            .map(|(k, (cnt, ok))| {
                (
                    k,
                    LevelStats {
                        count: cnt,
                        accuracy: ok as f64 / cnt as f64,
                    },
                )
            })
            .collect(),
        calibration,
        ece,
    })
}

/// Fits the normalization on the rewards of every response of `pairs`.
pub fn fit_normalization<D: Dev>(
    rm: &RewardModel<D>,
    pairs: &[EncodedPair],
    batch: usize,
) -> Result<Normalization> {
    let (c, r) = pair_scores(rm, pairs, batch)?;
    Normalization::fit(&[c, r].concat())
}

/// What a call to [`train`] did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Optimizer steps done in total (including before a resume).
    pub steps: u64,
    pub total_steps: u64,
    /// False when stopped early by `stop_after`.
    pub finished: bool,
    /// Final held-out evaluation (when finished and there is a held-out set).
    pub eval: Option<EvalReport>,
}

/// What one optimizer step saw (sums over its pairs, for averaging).
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// Sum of per-pair losses (BT with margin + centering term).
    pub loss_sum: f64,
    /// Pairs with `r_c > r_r` (before the update).
    pub correct: usize,
    /// Sum of `r_c − r_r`.
    pub margin_sum: f64,
    pub pairs: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// Gradients of `scale × Σ pair losses` over one micro-batch (chosen and
/// rejected rows in one right-padded batch), with the pairs' statistics.
fn micro_grads<D: Dev>(
    rm: &RewardModel<D>,
    micro: &[&EncodedPair],
    centering: f32,
    scale: f32,
) -> Result<(ParamTensors<D>, StepStats)> {
    let pad = rm.pad_id();
    let dev = rm.backbone.dev.clone();
    let k = micro.len();
    let rows: Vec<Vec<u32>> = micro
        .iter()
        .map(|p| p.chosen.clone())
        .chain(micro.iter().map(|p| p.rejected.clone()))
        .collect();
    let b = Batch::right_padded(&rows, pad)?;
    let rewards = rm.forward(rm.backbone.embed_tokens.trace(Gradients::leaky()), &b)?;
    let values = rewards.as_vec();
    let ic = dev.tensor_from_vec((0..k).collect::<Vec<usize>>(), (k,));
    let ir = dev.tensor_from_vec((k..2 * k).collect::<Vec<usize>>(), (k,));
    let rc = rewards.with_empty_tape().gather(ic);
    let rr = rewards.gather(ir);
    let mut st = StepStats {
        pairs: k,
        ..StepStats::default()
    };
    for (j, p) in micro.iter().enumerate() {
        let (c, r) = (values[j] as f64, values[k + j] as f64);
        st.loss_sum += bt_loss(c, r, p.margin as f64) + centering as f64 * (c + r) * (c + r);
        st.correct += (c > r) as usize;
        st.margin_sum += c - r;
    }
    let m = dev.tensor_from_vec(micro.iter().map(|p| p.margin).collect::<Vec<f32>>(), (k,));
    let loss = pairwise_loss_tensor(rc, rr, &m, centering, scale);
    let mut grads = loss.backward();
    Ok((ParamTensors::from_backward(rm, &mut grads)?, st))
}

/// One optimizer step on `batch`: forward/backward per micro-batch of
/// `micro_batch` pairs (chosen and rejected rows in one right-padded batch),
/// gradients summed as the batch mean, global-norm clipping, AdamW at `lr`.
pub fn train_step<D: Dev>(
    rm: &mut RewardModel<D>,
    opt: &mut AdamW<D>,
    batch: &[&EncodedPair],
    micro_batch: usize,
    centering: f32,
    max_grad_norm: f32,
    lr: f32,
) -> Result<StepStats> {
    if batch.is_empty() || micro_batch == 0 {
        bail!("a step needs at least one pair and a micro-batch of at least 1");
    }
    let scale = 1.0 / batch.len() as f32;
    let mut st = StepStats::default();
    let mut acc: Option<ParamTensors<D>> = None;
    for micro in batch.chunks(micro_batch) {
        let (g, s) = micro_grads(rm, micro, centering, scale)?;
        st.loss_sum += s.loss_sum;
        st.correct += s.correct;
        st.margin_sum += s.margin_sum;
        st.pairs += s.pairs;
        match &mut acc {
            None => acc = Some(g),
            Some(a) => a.add(&g),
        }
    }
    let mut grads = acc.expect("a step has at least one micro-batch");
    st.grad_norm = grads.clip_global_norm(max_grad_norm);
    if !st.grad_norm.is_finite() {
        bail!("gradient norm is {}; lower the learning rate", st.grad_norm);
    }
    opt.update(rm, &grads, lr);
    Ok(st)
}

/// Fingerprint of the training pairs, so a resume on other data is refused.
fn data_fingerprint(pairs: &[EncodedPair]) -> String {
    let mut f = Fingerprint::default();
    for p in pairs {
        f.feed_tokens(&p.chosen);
        f.feed_tokens(&p.rejected);
        f.feed(p.margin.to_bits() as u64);
    }
    f.hex()
}

/// The metrics file of a run whose model goes to `out`: `<out>.metrics.jsonl`.
pub fn metrics_path(out: &Path) -> PathBuf {
    train_loop::metrics_path(out)
}

/// A saved run: the model, the optimizer, and the progress JSON.
pub type Checkpoint<D> = (RewardModel<D>, AdamW<D>, Value);

/// Loads the model and optimizer of a run saved in `out` (None if `out`
/// holds no training state).
pub fn load_checkpoint<D: Dev>(out: &Path, dev: &D) -> Result<Option<Checkpoint<D>>> {
    if !train_state::exists(out) {
        return Ok(None);
    }
    let rm = RewardModel::load(out, dev)?;
    let (opt, progress) = train_state::load(out, &rm, dev)
        .with_context(|| format!("cannot resume from {}", out.display()))?;
    Ok(Some((rm, opt, progress)))
}

/// Reward-model training as a stage of the shared loop.
struct RmStage<'a> {
    train: &'a [EncodedPair],
    eval: &'a [EncodedPair],
    centering: f32,
    sources: Value,
    eval_batch: usize,
    /// The final held-out report, written next to the model.
    report: Option<EvalReport>,
}

impl<D: Dev> Stage<D> for RmStage<'_> {
    type Model = RewardModel<D>;

    fn name(&self) -> &'static str {
        "rm"
    }

    fn len(&self) -> usize {
        self.train.len()
    }

    fn micro_step(
        &mut self,
        rm: &RewardModel<D>,
        examples: &[usize],
        scale: f32,
    ) -> Result<(ParamTensors<D>, Metrics)> {
        let micro: Vec<&EncodedPair> = examples.iter().map(|&i| &self.train[i]).collect();
        let (g, st) = micro_grads(rm, &micro, self.centering, scale)?;
        let mut m = Metrics::default();
        m.add("loss", st.loss_sum, st.pairs as f64);
        m.add("accuracy", st.correct as f64, st.pairs as f64);
        m.add("margin", st.margin_sum, st.pairs as f64);
        Ok((g, m))
    }

    fn evaluate(&mut self, rm: &RewardModel<D>) -> Result<Option<Metrics>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let r = evaluate(rm, self.eval, self.eval_batch)?;
        let mut m = Metrics::default();
        m.add("loss", r.loss, 1.0);
        m.add("accuracy", r.accuracy, 1.0);
        m.add("margin", r.mean_margin, 1.0);
        m.add("ece", r.ece, 1.0);
        self.report = Some(r);
        Ok(Some(m))
    }

    fn finish(&mut self, rm: &mut RewardModel<D>) -> Result<()> {
        // normalization on the held-out responses (the training ones if there are none)
        let reference = if self.eval.is_empty() {
            self.train
        } else {
            self.eval
        };
        rm.normalization = fit_normalization(rm, reference, self.eval_batch)?;
        Ok(())
    }

    fn write_model(&self, rm: &RewardModel<D>, dir: &Path, dtype: DType) -> Result<()> {
        rm.write_into(dir, dtype)?;
        if let Some(r) = &self.report {
            write_file_synced(
                &dir.join("eval_report.json"),
                serde_json::to_string_pretty(r)?.as_bytes(),
            )?;
        }
        Ok(())
    }

    fn fingerprint(&self) -> String {
        data_fingerprint(self.train)
    }

    fn settings(&self) -> Value {
        serde_json::json!({"centering": self.centering, "sources": self.sources})
    }
}

/// Trains `rm` on `train` pairs, evaluates on `eval` (may be empty), and
/// saves to `out` (a HF reward-model directory with `trainer_state/`).
///
/// `resume` is the optimizer and progress from [`load_checkpoint`] (with
/// `rm` loaded from the same checkpoint); it must come from a run on the
/// same data and batch settings. Metrics go to [`metrics_path`]`(out)`.
pub fn train<D: Dev>(
    rm: &mut RewardModel<D>,
    train: &[EncodedPair],
    eval: &[EncodedPair],
    cfg: &TrainConfig,
    out: &Path,
    resume: Option<(AdamW<D>, Value)>,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if train.is_empty() {
        bail!("no training pairs");
    }
    let mut stage = RmStage {
        train,
        eval,
        centering: cfg.centering,
        sources: cfg.sources.clone(),
        eval_batch: cfg.eval_batch,
        report: None,
    };
    let o = train_loop::run(rm, &mut stage, &cfg.loop_config(), out, resume)?;
    Ok(TrainOutcome {
        steps: o.steps,
        total_steps: o.total_steps,
        finished: o.finished,
        eval: if o.finished { stage.report } else { None },
    })
}
