//! The training loop every stage shares (SFT, rejection-sampling fine-tuning,
//! DPO, the reward model): deterministic data order, micro-batches with
//! gradient accumulation, global-norm clipping, AdamW on a schedule, metrics
//! as JSONL with a progress bar, periodic atomic checkpoints, exact resume,
//! and a clean stop on Ctrl-C that leaves a resumable checkpoint.
//!
//! A stage says how to compute the gradient of a micro-batch ([`Stage`]); the
//! loop owns everything else.
//!
//! Determinism: the data order of epoch `e` is a shuffle seeded by
//! `seed + e`, and optimizer step `s` takes the examples at positions
//! `s·batch .. (s+1)·batch` of the concatenated epoch orders. The step is
//! therefore the whole data cursor and RNG state, so a resumed run computes
//! exactly what an uninterrupted one does.
//!
//! Loss scaling: each example has a weight (the number of items its loss is a
//! sum over: 1 for a preference pair, its response tokens for SFT). A step's
//! gradient is the gradient of the summed item losses divided by the step's
//! total weight, so the loss is the mean over the whole batch however it is
//! split into micro-batches (as transformers' `num_items_in_batch`).
use crate::config::DType;
use crate::fs_atomic::write_dir_atomic;
use crate::model::Dev;
use crate::train::{AdamW, AdamWConfig, HasParams, ParamTensors, Schedule};
use crate::train_state;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Shape of the learning-rate schedule after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine decay to `min_lr_ratio` of the peak (Llama-2).
    #[default]
    Cosine,
    /// Linear decay to 0 (transformers' default).
    Linear,
    /// No decay: the peak rate to the end.
    Constant,
}

/// Optimizer, schedule and bookkeeping (stage defaults in brackets).
#[derive(clap::Args, Debug, Clone)]
pub struct LoopArgs {
    /// Peak learning rate [sft/rs/rm 1e-5, dpo 1e-6, ppo: preset].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Examples per optimizer step (ppo: episodes per iteration) [32; ppo: preset].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Examples per forward/backward pass; gradients are accumulated, so memory follows this.
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    /// Passes over the data (ppo: over the prompts) [1]. Every step holds --batch-size
    /// examples, so a partial last batch is filled from the next pass's shuffle.
    #[allow(rustdoc::broken_intra_doc_links)] // clap help text, not Markdown
    #[arg(long)]
    pub epochs: Option<f32>,
    /// Number of optimizer steps (ppo: iterations); overrides --epochs.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Learning-rate schedule after warmup [cosine; ppo: preset].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Fraction of steps of linear warmup [0.03; ppo: preset].
    #[arg(long)]
    pub warmup_ratio: Option<f32>,
    /// The cosine schedule ends at this fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// AdamW decoupled weight decay (on matrices) [0.1; ppo: preset].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// AdamW β1 [0.9] (transformers' `adam_beta1`).
    #[arg(long)]
    pub adam_beta1: Option<f32>,
    /// AdamW β2 [Llama-2's 0.95; ppo trl preset 0.999; transformers' default 0.999].
    #[arg(long)]
    pub adam_beta2: Option<f32>,
    /// AdamW ε [Llama-2's 1e-5; ppo trl preset 1e-8; transformers' default 1e-8].
    #[arg(long)]
    pub adam_epsilon: Option<f32>,
    /// Seed of the data order and of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a metrics line every N steps [10; ppo: 1].
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Evaluate on the held-out set every N steps (0 = at the end only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Save a resumable checkpoint every N steps (0 = only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Stop after N steps with a checkpoint, as if interrupted (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
    /// Storage dtype of the final weights (float32, bfloat16, float16).
    #[arg(long, default_value = "float32")]
    pub dtype: DType,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl LoopArgs {
    /// `base` (the stage's defaults) with what the user gave.
    pub fn apply(&self, base: LoopConfig) -> LoopConfig {
        let mut c = base;
        c.lr = self.lr.unwrap_or(c.lr);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.micro_batch = self.micro_batch;
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.max_steps = self.max_steps.or(c.max_steps);
        c.schedule = self.schedule.unwrap_or(c.schedule);
        c.warmup_ratio = self.warmup_ratio.unwrap_or(c.warmup_ratio);
        c.min_lr_ratio = self.min_lr_ratio;
        c.max_grad_norm = self.max_grad_norm;
        c.adamw.weight_decay = self.weight_decay.unwrap_or(c.adamw.weight_decay);
        c.adamw.beta1 = self.adam_beta1.unwrap_or(c.adamw.beta1);
        c.adamw.beta2 = self.adam_beta2.unwrap_or(c.adamw.beta2);
        c.adamw.eps = self.adam_epsilon.unwrap_or(c.adamw.eps);
        c.seed = self.seed;
        c.log_every = self.log_every.unwrap_or(c.log_every);
        c.eval_every = self.eval_every;
        c.save_every = self.save_every;
        c.stop_after = self.stop_after;
        c.dtype = self.dtype;
        c.progress = !self.quiet;
        c
    }
}

/// Settings of the shared loop (defaults: Llama-2's fine-tuning recipe).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward pass; peak memory follows this, not the batch.
    pub micro_batch: usize,
    /// Passes over the data.
    pub epochs: f32,
    /// Overrides the number of optimizer steps `epochs` implies.
    pub max_steps: Option<u64>,
    pub schedule: ScheduleKind,
    /// Fraction of steps of linear warmup.
    pub warmup_ratio: f32,
    /// The cosine schedule ends at this fraction of the peak.
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    pub adamw: AdamWConfig,
    /// Seed of the data order.
    pub seed: u64,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Evaluate every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Save a resumable checkpoint every this many steps (0 = only at the end).
    pub save_every: u64,
    /// Stop (after saving a checkpoint) once this many steps are done, as an
    /// interruption would; the schedule still spans the whole run.
    pub stop_after: Option<u64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Storage dtype of the final weights (checkpoints to resume from are f32).
    #[serde(skip, default = "f32_dtype")]
    pub dtype: DType,
}

fn f32_dtype() -> DType {
    DType::F32
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            lr: 1e-5,
            batch_size: 32,
            micro_batch: 8,
            epochs: 1.0,
            max_steps: None,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 0,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            stop_after: None,
            progress: true,
            dtype: DType::F32,
        }
    }
}

impl LoopConfig {
    /// Rejects settings the loop cannot run with: rates, sizes, ratios or
    /// AdamW parameters out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("learning rate must be a positive number, got {}", self.lr);
        }
        if self.batch_size == 0 || self.micro_batch == 0 {
            bail!("batch sizes must be at least 1");
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0) && self.max_steps.is_none() {
            bail!("epochs must be a positive number, got {}", self.epochs);
        }
        if self.max_steps == Some(0) {
            bail!("max steps must be at least 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("warmup ratio must be in [0, 1) and the minimum lr ratio in [0, 1]");
        }
        let a = &self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2)) {
            bail!(
                "AdamW betas must be in [0, 1), got {} and {}",
                a.beta1,
                a.beta2
            );
        }
        let eps_ok = a.eps.is_finite() && a.eps > 0.0;
        let wd_ok = a.weight_decay.is_finite() && a.weight_decay >= 0.0;
        if !(eps_ok && wd_ok) {
            bail!(
                "AdamW epsilon must be positive and weight decay >= 0, got {} and {}",
                a.eps,
                a.weight_decay
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            bail!(
                "the gradient clip must be a positive number, got {}",
                self.max_grad_norm
            );
        }
        Ok(())
    }

    /// Total optimizer steps for `n` training examples.
    pub fn total_steps(&self, n: usize) -> u64 {
        self.max_steps.unwrap_or_else(|| {
            ((self.epochs as f64 * n as f64) / self.batch_size as f64)
                .ceil()
                .max(1.0) as u64
        })
    }

    /// The learning-rate schedule over `total` steps.
    pub fn schedule(&self, total: u64) -> Schedule {
        let warmup = (self.warmup_ratio as f64 * total as f64).ceil() as u64;
        match self.schedule {
            ScheduleKind::Cosine => Schedule::Cosine {
                warmup,
                total,
                min_ratio: self.min_lr_ratio,
            },
            ScheduleKind::Linear => Schedule::Linear { warmup, total },
            ScheduleKind::Constant => Schedule::Constant { warmup },
        }
    }
}

/// Weighted sums of named metrics; a metric's value is `sum / weight`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, (f64, f64)>);

impl Metrics {
    /// Adds `sum` over `weight` items to metric `name`.
    pub fn add(&mut self, name: &str, sum: f64, weight: f64) {
        let e = self.0.entry(name.to_string()).or_insert((0.0, 0.0));
        e.0 += sum;
        e.1 += weight;
    }

    /// Adds every metric of `other`.
    pub fn merge(&mut self, other: &Metrics) {
        for (k, &(s, w)) in &other.0 {
            self.add(k, s, w);
        }
    }

    /// The mean of each metric.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(k, &(s, w))| (k.clone(), if w > 0.0 { s / w } else { 0.0 }))
            .collect()
    }
}

/// What a training stage contributes to the shared loop.
pub trait Stage<D: Dev> {
    /// The trained model.
    type Model: HasParams<D>;
    /// Short name, stored with checkpoints (`sft`, `dpo`, `rm`, ...).
    fn name(&self) -> &'static str;
    /// Number of training examples.
    fn len(&self) -> usize;
    /// Whether there is no training example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loss weight of example `i` (see the module docs); at least 1.
    fn weight(&self, i: usize) -> f64 {
        let _ = i;
        1.0
    }
    /// Gradients of `scale × (sum of the item losses of examples)` and the
    /// metric sums of those examples (before the update).
    fn micro_step(
        &mut self,
        model: &Self::Model,
        examples: &[usize],
        scale: f32,
    ) -> Result<(ParamTensors<D>, Metrics)>;
    /// Held-out metrics, logged with an `eval_` prefix; None without a held-out set.
    fn evaluate(&mut self, model: &Self::Model) -> Result<Option<Metrics>> {
        let _ = model;
        Ok(None)
    }
    /// Called once after the last step, before the final evaluation and save
    /// (e.g. to fit the reward normalization).
    fn finish(&mut self, model: &mut Self::Model) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// Writes the model's directory contents (config, weights, tokenizer) into `dir`.
    fn write_model(&self, model: &Self::Model, dir: &Path, dtype: DType) -> Result<()>;
    /// Identity of the training data, so a resume on other data is refused.
    fn fingerprint(&self) -> String;
    /// The stage's own settings (e.g. DPO's β and loss), saved with the
    /// checkpoint so a resume with other values is refused by name.
    fn settings(&self) -> Value {
        Value::Null
    }
}

/// FNV-1a over integers: a data fingerprint stable across runs and platforms.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf29ce484222325)
    }
}

impl Fingerprint {
    /// Mixes `x` into the hash (FNV-1a over its little-endian bytes).
    pub fn feed(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }

    /// Feeds a token sequence with its length.
    pub fn feed_tokens(&mut self, ids: &[u32]) {
        self.feed(ids.len() as u64);
        ids.iter().for_each(|&t| self.feed(t as u64));
    }

    /// The fingerprint as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Example indices of optimizer step `step` (see the module docs).
pub fn step_examples(step: u64, batch: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut order: (u64, Vec<usize>) = (u64::MAX, vec![]);
    (0..batch as u64)
        .map(|i| {
            let g = step * batch as u64 + i;
            let epoch = g / n as u64;
            if order.0 != epoch {
                let mut o: Vec<usize> = (0..n).collect();
                o.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch)));
                order = (epoch, o);
            }
            order.1[(g % n as u64) as usize]
        })
        .collect()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT/SIGTERM) ask running loops to stop at the next step
/// boundary with a resumable checkpoint; a second Ctrl-C exits at once.
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let r = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted twice: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to quit at once)");
        });
        if let Err(e) = r {
            eprintln!("warning: cannot install the Ctrl-C handler ({e}); an interrupted run resumes from its last periodic checkpoint");
        }
    });
}

/// Whether an interrupt was requested.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running loops to stop at the next step boundary with a resumable
/// checkpoint, as Ctrl-C does, for a reason of the program's own (a round
/// worker whose lease was lost); [`clear_stop_request`] lets loops run again.
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Ends a [`request_stop`].
pub fn clear_stop_request() {
    STOP_REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether loops should stop at the next step boundary: an interrupt, or a
/// [`request_stop`].
pub fn should_stop() -> bool {
    interrupted() || STOP_REQUESTED.load(Ordering::SeqCst)
}

/// The error of a run stopped by Ctrl-C after saving a resumable checkpoint;
/// `rlhf` exits with 130 on it, as a shell does for SIGINT.
#[derive(Debug)]
pub struct Interrupted {
    pub step: u64,
    pub total: u64,
    pub out: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted after step {} of {}: {} holds an unfinished checkpoint; continue with --resume",
            self.step,
            self.total,
            self.out.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// What a command does with a run that stopped early: an interrupt is an
/// error ([`Interrupted`]); `--stop-after` (a deliberate stop) only says how
/// to continue.
pub fn stopped_early(step: u64, total: u64, out: &Path) -> Result<()> {
    if interrupted() {
        return Err(Interrupted {
            step,
            total,
            out: out.to_path_buf(),
        }
        .into());
    }
    eprintln!("stopped after step {step} of {total}; continue with --resume");
    Ok(())
}

/// The metrics file of a run whose model goes to `out`: `<out>.metrics.jsonl`.
pub fn metrics_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".metrics.jsonl");
    PathBuf::from(s)
}

/// Opens the metrics file: fresh for a new run; on resume, keeps only the
/// lines of steps already done, so the file reads like one uninterrupted run.
pub fn open_metrics(path: &Path, start: u64) -> Result<std::io::BufWriter<std::fs::File>> {
    let kept = if start > 0 && path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s <= start)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    } else {
        String::new()
    };
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    // The kept lines go to a temporary file renamed over the old one, so an
    // exit at any moment (a second Ctrl-C) leaves the old or the new file,
    // never an empty one.
    let mut tmp = tempfile::NamedTempFile::new_in(&parent)
        .with_context(|| format!("cannot create a file in {}", parent.display()))?;
    tmp.write_all(kept.as_bytes())?;
    tmp.as_file().sync_all()?;
    let f = tmp
        .persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(std::io::BufWriter::new(f))
}

/// A progress bar over `total` steps (hidden when `show` is false).
pub fn progress_bar(total: u64, start: u64, show: bool, unit: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} {{eta}}"
    )) {
        bar.set_style(style);
    }
    bar.set_position(start);
    bar
}

/// What a call to [`run`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Optimizer steps done in total (including before a resume).
    pub steps: u64,
    pub total_steps: u64,
    /// False when stopped early (interrupt or `stop_after`); resume to continue.
    pub finished: bool,
    /// Mean training metrics over the whole run's last logging window.
    pub last_train: BTreeMap<String, f64>,
    /// Final held-out metrics (when finished and the stage has a held-out set).
    pub eval: Option<BTreeMap<String, f64>>,
}

/// The optimizer and progress of a run saved in `out`, for `model` (already
/// loaded from `out`); None if `out` holds no training state.
pub fn load_state<D: Dev>(
    out: &Path,
    model: &impl HasParams<D>,
    dev: &D,
) -> Result<Option<(AdamW<D>, Value)>> {
    if !train_state::exists(out) {
        return Ok(None);
    }
    let s = train_state::load(out, model, dev)
        .with_context(|| format!("cannot resume from {}", out.display()))?;
    Ok(Some(s))
}

/// Saves model + training state atomically (weights in f32 so a resume is exact).
pub fn save_checkpoint<D: Dev, S: Stage<D>>(
    stage: &S,
    model: &S::Model,
    opt: &AdamW<D>,
    progress: &Value,
    out: &Path,
    dtype: DType,
) -> Result<()> {
    write_dir_atomic(out, |tmp| {
        stage.write_model(model, tmp, dtype)?;
        train_state::save(tmp, model, opt, progress)
    })
    .with_context(|| format!("cannot save a checkpoint to {}", out.display()))
}

/// Loop settings a resume may change: they do not change what is computed.
const RESUMABLE_CHANGES: [&str; 6] = [
    "micro_batch",
    "log_every",
    "eval_every",
    "save_every",
    "stop_after",
    "progress",
];

/// `(name, value)` of every leaf of a JSON object, nested names joined by dots.
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&name, x, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// The settings that differ between a checkpoint's saved JSON and this run's, by name.
fn differences(saved: &Value, now: &Value, skip: &[&str]) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves("", saved, &mut a);
    leaves("", now, &mut b);
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|k| !skip.contains(&k.as_str()))
        .filter_map(|k| {
            let (x, y) = (
                a.get(k).unwrap_or(&Value::Null),
                b.get(k).unwrap_or(&Value::Null),
            );
            // numbers compare as the f32 settings they are: JSON's f64 text
            // does not round-trip their last bits
            let same = match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()),
                _ => x == y,
            };
            (!same).then(|| format!("{k} {x} -> {y}"))
        })
        .collect()
}

/// Refuses a resume whose stage, data or settings differ from the
/// checkpoint's, naming each difference: an exact resume needs the same run.
fn check_resume(
    progress: &Value,
    identity: &Value,
    cfg: &LoopConfig,
    settings: &Value,
    examples: usize,
) -> Result<()> {
    let got = |k: &str| progress.get(k).cloned().unwrap_or(Value::Null);
    if got("stage") != identity["stage"] {
        bail!(
            "cannot resume: the checkpoint is a {} run, this is {}",
            got("stage"),
            identity["stage"]
        );
    }
    let mut diffs = vec![];
    if got("data") != identity["data"] {
        diffs.push(format!(
            "the training data ({} examples in the checkpoint's run, {examples} now, or the same number with other contents)",
            got("examples")
        ));
    }
    for k in ["batch_size", "seed", "total_steps"] {
        if got(k) != identity[k] {
            diffs.push(format!("{k} {} -> {}", got(k), identity[k]));
        }
    }
    let now = serde_json::to_value(cfg).unwrap_or(Value::Null);
    if !progress["config"].is_null() {
        let mut skip: Vec<&str> = RESUMABLE_CHANGES.to_vec();
        skip.extend(["batch_size", "seed", "max_steps", "epochs"]); // reported as total_steps / above
        diffs.extend(differences(&progress["config"], &now, &skip));
    }
    if !progress["settings"].is_null() || !settings.is_null() {
        diffs.extend(differences(&progress["settings"], settings, &[]));
    }
    if !diffs.is_empty() {
        bail!(
            "cannot resume: this run differs from the checkpoint's in {}. An exact resume needs the same data and settings: run with the checkpoint's, or start over with --overwrite",
            diffs.join("; ")
        );
    }
    Ok(())
}

fn eval_line(step: u64, m: &BTreeMap<String, f64>) -> Value {
    let mut line = serde_json::Map::new();
    line.insert("step".into(), json!(step));
    for (k, v) in m {
        line.insert(format!("eval_{k}"), json!(v));
    }
    Value::Object(line)
}

/// Trains `model` with `stage` and saves it to `out` (a model directory with
/// `trainer_state/`). `resume` is [`load_state`]`(out)` with `model` loaded
/// from the same checkpoint; it must come from a run on the same data, batch
/// size, seed and length. Metrics go to [`metrics_path`]`(out)`.
pub fn run<D: Dev, S: Stage<D>>(
    model: &mut S::Model,
    stage: &mut S,
    cfg: &LoopConfig,
    out: &Path,
    resume: Option<(AdamW<D>, Value)>,
) -> Result<Outcome> {
    cfg.validate()?;
    let n = stage.len();
    if n == 0 {
        bail!("no training examples");
    }
    let total = cfg.total_steps(n);
    let schedule = cfg.schedule(total);
    let fingerprint = stage.fingerprint();
    let identity = json!({"stage": stage.name(), "data": fingerprint, "batch_size": cfg.batch_size, "seed": cfg.seed, "total_steps": total});
    let settings = stage.settings();
    let (mut opt, resume_tokens) = match resume {
        None => (AdamW::new(model, cfg.adamw), 0.0),
        Some((opt, progress)) => {
            check_resume(&progress, &identity, cfg, &settings, n)?;
            (opt, progress["num_tokens"].as_f64().unwrap_or(0.0))
        }
    };
    let start = opt.step;
    // TRL's `num_tokens`: input tokens seen since the run began (a stage
    // reports its micro-batches' counts under that name)
    let mut tokens_seen = resume_tokens;
    let progress_json = |step: u64, tokens_seen: f64| {
        let mut p = identity.clone();
        let m = p.as_object_mut().expect("object");
        m.insert("step".into(), json!(step));
        m.insert("num_tokens".into(), json!(tokens_seen));
        m.insert("cursor".into(), json!(step * cfg.batch_size as u64));
        m.insert(
            "epoch".into(),
            json!((step * cfg.batch_size as u64) as f64 / n as f64),
        );
        m.insert("examples".into(), json!(n));
        m.insert(
            "config".into(),
            serde_json::to_value(cfg).unwrap_or(Value::Null),
        );
        m.insert("settings".into(), settings.clone());
        p
    };
    if cfg.dtype != DType::F32 && (cfg.save_every > 0 || cfg.stop_after.is_some()) {
        eprintln!("note: intermediate checkpoints are saved in float32 so that a resume is exact");
    }
    let mut metrics = open_metrics(&metrics_path(out), start)?;
    let bar = progress_bar(total, start, cfg.progress, "steps");
    let mut window = Metrics::default();
    let mut window_examples = 0usize;
    let mut last_train = BTreeMap::new();
    let mut t0 = std::time::Instant::now();
    for step in start..total {
        if cfg.stop_after.is_some_and(|s| step >= s) || should_stop() {
            save_checkpoint(
                stage,
                model,
                &opt,
                &progress_json(step, tokens_seen),
                out,
                DType::F32,
            )?;
            bar.abandon_with_message("stopped; resume to continue");
            return Ok(Outcome {
                steps: step,
                total_steps: total,
                finished: false,
                last_train,
                eval: None,
            });
        }
        let examples = step_examples(step, cfg.batch_size, n, cfg.seed);
        let weight: f64 = examples.iter().map(|&i| stage.weight(i)).sum();
        let scale = (1.0 / weight.max(1.0)) as f32;
        let mut acc: Option<ParamTensors<D>> = None;
        for micro in examples.chunks(cfg.micro_batch) {
            let (g, m) = stage
                .micro_step(model, micro, scale)
                .with_context(|| format!("optimizer step {}", step + 1))?;
            tokens_seen += m.0.get("num_tokens").map_or(0.0, |t| t.0);
            window.merge(&m);
            match &mut acc {
                None => acc = Some(g),
                Some(a) => a.add(&g),
            }
        }
        window_examples += examples.len();
        let mut grads = acc.expect("a step has at least one example");
        let norm = grads.clip_global_norm(cfg.max_grad_norm);
        if !norm.is_finite() {
            bail!(
                "optimizer step {}: the gradient norm is {norm}; lower the learning rate",
                step + 1
            );
        }
        window.add("grad_norm", norm as f64, 1.0);
        let lr = cfg.lr * schedule.factor(step);
        opt.update(model, &grads, lr);
        let done = step + 1;
        bar.inc(1);
        if done % cfg.log_every.max(1) == 0 || done == total {
            let means = window.means();
            let mut line = serde_json::Map::new();
            line.insert("step".into(), json!(done));
            line.insert(
                "epoch".into(),
                json!((done * cfg.batch_size as u64) as f64 / n as f64),
            );
            line.insert("learning_rate".into(), json!(lr));
            for (k, v) in &means {
                line.insert(k.clone(), json!(v));
            }
            if means.contains_key("num_tokens") {
                line.insert("num_tokens".into(), json!(tokens_seen));
            }
            line.insert(
                "train_samples_per_second".into(),
                json!(window_examples as f64 / t0.elapsed().as_secs_f64().max(1e-9)),
            );
            writeln!(metrics, "{}", Value::Object(line))?;
            metrics.flush()?;
            bar.set_message(
                means
                    .get("loss")
                    .map(|l| format!("loss {l:.4}"))
                    .unwrap_or_default(),
            );
            last_train = means;
            window = Metrics::default();
            window_examples = 0;
            t0 = std::time::Instant::now();
        }
        if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done != total {
            if let Some(m) = stage.evaluate(model)? {
                writeln!(metrics, "{}", eval_line(done, &m.means()))?;
                metrics.flush()?;
            }
        }
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done != total {
            save_checkpoint(
                stage,
                model,
                &opt,
                &progress_json(done, tokens_seen),
                out,
                DType::F32,
            )?;
        }
    }
    bar.finish_and_clear();
    stage.finish(model)?;
    let eval = stage.evaluate(model)?.map(|m| m.means());
    if let Some(m) = &eval {
        writeln!(metrics, "{}", eval_line(total, m))?;
        metrics.flush()?;
    }
    save_checkpoint(
        stage,
        model,
        &opt,
        &progress_json(total, tokens_seen),
        out,
        cfg.dtype,
    )?;
    Ok(Outcome {
        steps: total,
        total_steps: total,
        finished: true,
        last_train,
        eval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_examples_cover_each_epoch_once_and_depend_only_on_the_step() {
        let n = 10;
        let mut seen = vec![0; n];
        for s in 0..5 {
            for i in step_examples(s, 4, n, 7) {
                seen[i] += 1;
            }
        }
        // 20 draws = 2 epochs: every example exactly twice
        assert!(seen.iter().all(|&c| c == 2), "{seen:?}");
        assert_eq!(step_examples(3, 4, n, 7), step_examples(3, 4, n, 7));
        assert_ne!(step_examples(0, 10, n, 7), step_examples(0, 10, n, 8));
    }

    #[test]
    fn metrics_are_weighted_means() {
        let mut m = Metrics::default();
        m.add("loss", 3.0, 2.0);
        let mut o = Metrics::default();
        o.add("loss", 1.0, 2.0);
        o.add("acc", 1.0, 1.0);
        m.merge(&o);
        let means = m.means();
        assert_eq!(means["loss"], 1.0);
        assert_eq!(means["acc"], 1.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = LoopConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            LoopConfig {
                lr: 0.0,
                ..LoopConfig::default()
            },
            LoopConfig {
                micro_batch: 0,
                ..LoopConfig::default()
            },
            LoopConfig {
                max_grad_norm: f32::NAN,
                ..LoopConfig::default()
            },
            LoopConfig {
                warmup_ratio: 1.0,
                ..LoopConfig::default()
            },
            LoopConfig {
                max_steps: Some(0),
                ..LoopConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
