//! Reward-model training on the shared primitives of `policy::train`:
//! AdamW (β1 0.9, β2 0.95, wd 0.1), cosine schedule to 10% with 3% warmup,
//! global-norm clipping at 1.0, micro-batches with gradient accumulation,
//! a held-out split, metrics as JSONL with a progress bar, checkpoints with
//! exact resume, and the reward normalization fitted at the end.
//!
//! Determinism: the data order of epoch `e` is a shuffle seeded by
//! `seed + e`, and optimizer step `s` takes the pairs at positions
//! `s·batch .. (s+1)·batch` of the concatenated epoch orders. The step
//! therefore is the whole data cursor and RNG state, and a resumed run
//! computes exactly what an uninterrupted one does.
use crate::data::EncodedPair;
use crate::loss::{bt_loss, pairwise_loss_tensor, Strength};
use crate::model::{Normalization, RewardModel};
use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use policy::config::DType;
use policy::model::{Batch, Dev};
use policy::safetensors_io::{write_dir_atomic, write_file_synced};
use policy::train::{AdamW, AdamWConfig, ParamTensors, Schedule};
use policy::train_state;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
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
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("learning rate must be a positive number, got {}", self.lr);
        }
        if self.batch_size == 0 || self.micro_batch == 0 || self.eval_batch == 0 {
            bail!("batch sizes must be at least 1");
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0) && self.max_steps.is_none() {
            bail!("epochs must be a positive number, got {}", self.epochs);
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("warmup ratio must be in [0, 1) and the minimum lr ratio in [0, 1]");
        }
        let centering_ok = self.centering.is_finite() && self.centering >= 0.0;
        let clip_ok = self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0;
        if !centering_ok || !clip_ok {
            bail!("centering must be >= 0 and the gradient clip > 0");
        }
        Ok(())
    }

    /// Total optimizer steps for `n` training pairs.
    pub fn total_steps(&self, n: usize) -> u64 {
        self.max_steps.unwrap_or_else(|| ((self.epochs as f64 * n as f64) / self.batch_size as f64).ceil().max(1.0) as u64)
    }

    fn schedule(&self, total: u64) -> Schedule {
        let warmup = (self.warmup_ratio as f64 * total as f64).ceil() as u64;
        Schedule::Cosine { warmup, total, min_ratio: self.min_lr_ratio }
    }
}

/// Splits pairs into training and held-out sets by comparison (`group`), so
/// pairs expanded from one ranking never straddle the split. Deterministic in `seed`.
pub fn split_held_out(pairs: Vec<EncodedPair>, fraction: f32, seed: u64) -> Result<(Vec<EncodedPair>, Vec<EncodedPair>)> {
    if !(0.0..1.0).contains(&fraction) {
        bail!("held-out fraction must be in [0, 1), got {fraction}");
    }
    let mut groups: Vec<String> = pairs.iter().map(|p| p.group.clone()).collect();
    groups.sort();
    groups.dedup();
    groups.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed_5917));
    let n_eval = (groups.len() as f64 * fraction as f64).round() as usize;
    let eval_groups: std::collections::HashSet<&String> = groups[..n_eval].iter().collect();
    let (eval, train): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|p| eval_groups.contains(&p.group));
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
pub fn pair_scores<D: Dev>(rm: &RewardModel<D>, pairs: &[EncodedPair], batch: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let c: Vec<Vec<u32>> = pairs.iter().map(|p| p.chosen.clone()).collect();
    let r: Vec<Vec<u32>> = pairs.iter().map(|p| p.rejected.clone()).collect();
    Ok((rm.raw_scores(&c, batch)?, rm.raw_scores(&r, batch)?))
}

/// Loss, accuracy (overall and by strength), mean margin and calibration.
pub fn evaluate<D: Dev>(rm: &RewardModel<D>, pairs: &[EncodedPair], batch: usize) -> Result<EvalReport> {
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
        let level = p.strength.map(Strength::as_str).unwrap_or("unlabeled").to_string();
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
            accuracy: if count > 0 { ok as f64 / count as f64 } else { 0.0 },
        })
        .collect();
    let ece = calibration.iter().map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs()).sum();
    Ok(EvalReport {
        pairs: pairs.len(),
        loss: loss / n,
        accuracy: correct as f64 / n,
        mean_margin: margin / n,
        by_strength: levels.into_iter().map(|(k, (cnt, ok))| (k, LevelStats { count: cnt, accuracy: ok as f64 / cnt as f64 })).collect(),
        calibration,
        ece,
    })
}

/// Fits the normalization on the rewards of every response of `pairs`.
pub fn fit_normalization<D: Dev>(rm: &RewardModel<D>, pairs: &[EncodedPair], batch: usize) -> Result<Normalization> {
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
    let pad = rm.pad_id();
    let dev = rm.backbone.dev.clone();
    let scale = 1.0 / batch.len() as f32;
    let mut st = StepStats::default();
    let mut acc: Option<ParamTensors<D>> = None;
    for micro in batch.chunks(micro_batch) {
        let k = micro.len();
        let rows: Vec<Vec<u32>> = micro.iter().map(|p| p.chosen.clone()).chain(micro.iter().map(|p| p.rejected.clone())).collect();
        let b = Batch::right_padded(&rows, pad)?;
        let rewards = rm.forward(rm.backbone.embed_tokens.trace(Gradients::leaky()), &b)?;
        let values = rewards.as_vec();
        let ic = dev.tensor_from_vec((0..k).collect::<Vec<usize>>(), (k,));
        let ir = dev.tensor_from_vec((k..2 * k).collect::<Vec<usize>>(), (k,));
        let rc = rewards.with_empty_tape().gather(ic);
        let rr = rewards.gather(ir);
        for (j, p) in micro.iter().enumerate() {
            let (c, r) = (values[j] as f64, values[k + j] as f64);
            st.loss_sum += bt_loss(c, r, p.margin as f64) + centering as f64 * (c + r) * (c + r);
            st.correct += (c > r) as usize;
            st.margin_sum += c - r;
        }
        st.pairs += k;
        let m = dev.tensor_from_vec(micro.iter().map(|p| p.margin).collect::<Vec<f32>>(), (k,));
        let loss = pairwise_loss_tensor(rc, rr, &m, centering, scale);
        let mut grads = loss.backward();
        let g = ParamTensors::from_backward(rm, &mut grads)?;
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
    // FNV-1a over ids and margins: stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for p in pairs {
        feed(p.chosen.len() as u64);
        p.chosen.iter().for_each(|&t| feed(t as u64));
        feed(p.rejected.len() as u64);
        p.rejected.iter().for_each(|&t| feed(t as u64));
        feed(p.margin.to_bits() as u64);
    }
    format!("{h:016x}")
}

/// The metrics file of a run whose model goes to `out`: `<out>.metrics.jsonl`.
pub fn metrics_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".metrics.jsonl");
    PathBuf::from(s)
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
    let (opt, progress) = train_state::load(out, &rm, dev).with_context(|| format!("cannot resume from {}", out.display()))?;
    Ok(Some((rm, opt, progress)))
}

struct Running {
    loss: f64,
    correct: usize,
    margin: f64,
    pairs: usize,
    grad_norm: f64,
    steps: usize,
}

impl Running {
    fn new() -> Self {
        Running { loss: 0.0, correct: 0, margin: 0.0, pairs: 0, grad_norm: 0.0, steps: 0 }
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
    let n = train.len();
    let total = cfg.total_steps(n);
    let schedule = cfg.schedule(total);
    let fingerprint = data_fingerprint(train);
    let mut opt = match resume {
        None => AdamW::new(rm, cfg.adamw),
        Some((opt, progress)) => {
            let want = json!({"data": fingerprint, "batch_size": cfg.batch_size, "seed": cfg.seed, "total_steps": total});
            for k in ["data", "batch_size", "seed", "total_steps"] {
                if progress.get(k) != want.get(k) {
                    bail!(
                        "cannot resume: the checkpoint's {k} is {} but this run's is {} (same data, batch size, seed and length are needed for an exact resume)",
                        progress.get(k).unwrap_or(&Value::Null),
                        want[k]
                    );
                }
            }
            opt
        }
    };
    let start = opt.step;
    let metrics_file = metrics_path(out);
    let mut metrics = open_metrics(&metrics_file, start)?;
    let bar = if cfg.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} {eta}")?);
    bar.set_position(start);
    let mut order: (u64, Vec<usize>) = (u64::MAX, vec![]);
    let mut run = Running::new();
    let mut t0 = std::time::Instant::now();
    let progress_json = |step: u64| json!({"data": fingerprint, "batch_size": cfg.batch_size, "seed": cfg.seed, "total_steps": total,
                                          "step": step, "cursor": step * cfg.batch_size as u64, "epoch": (step * cfg.batch_size as u64) / n as u64,
                                          "train_pairs": n, "config": cfg});
    for step in start..total {
        if cfg.stop_after.is_some_and(|s| step >= s) {
            save_checkpoint(rm, &opt, &progress_json(step), out, cfg.dtype)?;
            bar.abandon_with_message("stopped; resume to continue");
            return Ok(TrainOutcome { steps: step, total_steps: total, finished: false, eval: None });
        }
        // this step's pairs, from the deterministic epoch orders
        let mut idx = Vec::with_capacity(cfg.batch_size);
        for i in 0..cfg.batch_size as u64 {
            let g = step * cfg.batch_size as u64 + i;
            let epoch = g / n as u64;
            if order.0 != epoch {
                let mut o: Vec<usize> = (0..n).collect();
                o.shuffle(&mut StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch)));
                order = (epoch, o);
            }
            idx.push(order.1[(g % n as u64) as usize]);
        }
        let batch: Vec<&EncodedPair> = idx.iter().map(|&i| &train[i]).collect();
        let lr = cfg.lr * schedule.factor(step);
        let st = train_step(rm, &mut opt, &batch, cfg.micro_batch, cfg.centering, cfg.max_grad_norm, lr)
            .with_context(|| format!("optimizer step {}", step + 1))?;
        run.loss += st.loss_sum;
        run.correct += st.correct;
        run.margin += st.margin_sum;
        run.pairs += st.pairs;
        let norm = st.grad_norm;
        run.grad_norm += norm as f64;
        run.steps += 1;
        let done = step + 1;
        bar.inc(1);
        if done % cfg.log_every.max(1) == 0 || done == total {
            let p = run.pairs.max(1) as f64;
            let line = json!({"step": done, "epoch": (done * cfg.batch_size as u64) as f64 / n as f64, "split": "train", "lr": lr,
                              "loss": run.loss / p, "accuracy": run.correct as f64 / p, "margin": run.margin / p,
                              "grad_norm": run.grad_norm / run.steps.max(1) as f64,
                              "pairs_per_sec": run.pairs as f64 / t0.elapsed().as_secs_f64().max(1e-9)});
            bar.set_message(format!("loss {:.4} acc {:.3}", run.loss / p, run.correct as f64 / p));
            writeln!(metrics, "{line}")?;
            metrics.flush()?;
            run = Running::new();
            t0 = std::time::Instant::now();
        }
        if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done != total && !eval.is_empty() {
            let r = evaluate(rm, eval, cfg.eval_batch)?;
            writeln!(metrics, "{}", json!({"step": done, "split": "eval", "loss": r.loss, "accuracy": r.accuracy, "margin": r.mean_margin}))?;
            metrics.flush()?;
        }
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done != total {
            save_checkpoint(rm, &opt, &progress_json(done), out, cfg.dtype)?;
        }
    }
    bar.finish_and_clear();
    // normalization on the held-out responses (the training ones if there are none)
    let reference = if eval.is_empty() { train } else { eval };
    rm.normalization = fit_normalization(rm, reference, cfg.eval_batch)?;
    let report = if eval.is_empty() { None } else { Some(evaluate(rm, eval, cfg.eval_batch)?) };
    if let Some(r) = &report {
        writeln!(metrics, "{}", json!({"step": total, "split": "eval", "loss": r.loss, "accuracy": r.accuracy, "margin": r.mean_margin}))?;
        metrics.flush()?;
    }
    let progress = progress_json(total);
    write_dir_atomic(out, |tmp| {
        rm.write_into(tmp, cfg.dtype)?;
        if let Some(r) = &report {
            write_file_synced(&tmp.join("eval_report.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
        }
        train_state::save(tmp, rm, &opt, &progress)
    })
    .with_context(|| format!("cannot save the reward model to {}", out.display()))?;
    Ok(TrainOutcome { steps: total, total_steps: total, finished: true, eval: report })
}

fn save_checkpoint<D: Dev>(rm: &RewardModel<D>, opt: &AdamW<D>, progress: &Value, out: &Path, dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        // bf16 weights would make the resumed run differ from an uninterrupted one.
        eprintln!("note: checkpoints for resuming are saved in float32");
    }
    write_dir_atomic(out, |tmp| {
        rm.write_into(tmp, DType::F32)?;
        train_state::save(tmp, rm, opt, progress)
    })
    .with_context(|| format!("cannot save a checkpoint to {}", out.display()))
}

/// Opens the metrics file: fresh for a new run; on resume, keeps only the
/// lines of steps already done, so the file reads like one uninterrupted run.
fn open_metrics(path: &Path, start: u64) -> Result<std::io::BufWriter<std::fs::File>> {
    let kept = if start > 0 && path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("step").and_then(Value::as_u64)).is_some_and(|s| s <= start))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    } else {
        String::new()
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(kept.as_bytes())?;
    Ok(std::io::BufWriter::new(f))
}
