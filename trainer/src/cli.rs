//! `rlhf sft|rs|dpo|ppo`: the training stages from the command line.
//! Every run writes a HF policy directory to `--out` (plus `trainer_state/`
//! to continue it) and its metrics to `OUT.metrics.jsonl`; `--resume`
//! continues an interrupted run exactly (Ctrl-C stops at the next step with a
//! checkpoint).
use crate::data::{encode_preferences, read_prompts, read_sft, PreferencePair, Sequence};
use crate::dpo::{DpoConfig, DpoLoss, DpoStage};
use crate::policy_io::{load_policy, PolicyFiles};
use crate::ppo::{self, PpoConfig, PpoModels};
use crate::ppo_math::{KlController, KlEstimator};
use crate::reward::Reward;
use crate::rs::{self, RsConfig};
use crate::sft::SftStage;
use anyhow::{bail, Context, Result};
use clap::Args;
use policy::checkpoint::Checkpoint;
use policy::cli::{stop_tokens, DeviceKind, OnDevice};
use policy::generate::SamplingConfig;
use policy::model::{Dev, Llama};
use policy::tokenizer::Tokenizer;
use policy::train_loop::{self, install_interrupt_handler, metrics_path, LoopConfig, Stage};
use reward_model::data::{read_pairs, Aggregation, DataOptions};
use reward_model::loss::MarginTable;
use reward_model::model::RewardModel;
use std::path::{Path, PathBuf};

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
    #[arg(long, default_value_t = 1024)]
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
    #[arg(long, default_value_t = 16)]
    pub score_batch: usize,
}

impl RewardArgs {
    fn load<D: Dev>(&self, dev: &D) -> Result<Reward<D>> {
        match (&self.reward_model, &self.safety_model, &self.helpfulness_model, &self.reward_fn) {
            (Some(rm), None, None, None) => Reward::model(rm, dev, self.score_batch),
            (None, Some(s), Some(h), None) => Reward::safety_helpfulness(s, h, dev, self.score_batch),
            (None, None, None, Some(f)) => Reward::builtin(f),
            _ => bail!("give one reward: --reward-model DIR, --safety-model DIR with --helpfulness-model DIR, or --reward-fn SPEC"),
        }
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
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Sampling temperature (Llama-2 re-tuned it per round; 1.2–1.3 was best for large K).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 128)]
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
    #[arg(long, default_value_t = 16)]
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
    #[arg(long, value_enum, default_value = "per-labeler")]
    pub aggregation: Aggregation,
    /// Held-out pairs; default: a split of --data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Fraction of pairs held out when --eval-data is not given.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f32,
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss: DpoLoss,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Label smoothing ε (cDPO with --loss sigmoid, robust DPO with --loss robust).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Weight of the NLL on chosen responses (RPO; Llama-3 used 0.2).
    #[arg(long, default_value_t = 0.0)]
    pub rpo_alpha: f32,
    /// Drop pairs longer than this many tokens.
    #[arg(long, default_value_t = 1024)]
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
    /// Passes over each iteration's episodes [preset].
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// Minibatches per pass (one optimizer step each) [preset].
    #[arg(long)]
    pub mini_batches: Option<usize>,
    /// Sampling temperature; log-probs use it too [preset: trl 0.7, llama2 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Response length limit [preset].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    pub opt: LoopArgs,
}

macro_rules! on_device {
    ($args:ty, $f:ident) => {
        impl OnDevice for $args {
            fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
                $f(&self, dev)
            }
        }
    };
}
on_device!(SftArgs, sft_cmd);
on_device!(RsArgs, rs_cmd);
on_device!(DpoArgs, dpo_cmd);
on_device!(PpoArgs, ppo_cmd);

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

/// The model to train: resumed from OUT, or the starting policy.
/// The optimizer and progress of a run to resume.
type Resume<D> = Option<(policy::train::AdamW<D>, serde_json::Value)>;

fn start<D: Dev>(r: &RunArgs, dev: &D) -> Result<(Checkpoint<D>, Tokenizer, Resume<D>)> {
    if policy::out_dir::check_training(&r.out, r.resume, r.overwrite)? {
        let (ck, tok) = load_policy(&r.out, dev)?;
        let state = train_loop::load_state(&r.out, &ck.model, dev)?;
        eprintln!("resuming {}", r.out.display());
        return Ok((ck, tok, state));
    }
    if r.resume {
        eprintln!(
            "--resume: {} holds no training state; starting from {}",
            r.out.display(),
            r.policy.display()
        );
    }
    let (ck, tok) = load_policy(&r.policy, dev)?;
    Ok((ck, tok, None))
}

fn finish_loop<D: Dev, S: Stage<D>>(
    model: &mut S::Model,
    stage: &mut S,
    cfg: &LoopConfig,
    r: &RunArgs,
    resume: Resume<D>,
) -> Result<()> {
    install_interrupt_handler();
    eprintln!(
        "{}: {} examples, {} steps",
        stage.name(),
        stage.len(),
        cfg.total_steps(stage.len())
    );
    let o = train_loop::run(model, stage, cfg, &r.out, resume)?;
    if !o.finished {
        return train_loop::stopped_early(o.steps, o.total_steps, &r.out);
    }
    let show = |m: &std::collections::BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("last steps: {}", show(&o.last_train));
    if let Some(e) = &o.eval {
        eprintln!("held-out: {}", show(e));
    }
    eprintln!(
        "wrote {} (metrics: {})",
        r.out.display(),
        metrics_path(&r.out).display()
    );
    Ok(())
}

fn sft_defaults() -> LoopConfig {
    LoopConfig {
        lr: 1e-5,
        ..LoopConfig::default()
    }
}

fn sft_cmd<D: Dev>(a: &SftArgs, dev: &D) -> Result<()> {
    let (mut ck, tok, resume) = start(&a.run, dev)?;
    let mut train = vec![];
    for p in &a.data {
        let (s, dropped) = read_sft(p, &tok, a.max_len)?;
        if dropped > 0 {
            eprintln!(
                "{}: dropped {dropped} examples longer than {} tokens",
                p.display(),
                a.max_len
            );
        }
        train.extend(s);
    }
    let eval = match &a.eval_data {
        Some(p) => read_sft(p, &tok, a.max_len)?.0,
        None => vec![],
    };
    if train.is_empty() {
        bail!("no training examples left");
    }
    let cfg = a.opt.apply(sft_defaults());
    let mut stage = SftStage {
        train,
        eval,
        files: PolicyFiles::of(&ck),
        eval_batch: a.opt.micro_batch * 2,
        name: "sft",
    };
    finish_loop(&mut ck.model, &mut stage, &cfg, &a.run, resume)
}

fn dpo_cmd<D: Dev>(a: &DpoArgs, dev: &D) -> Result<()> {
    let (mut ck, tok, resume) = start(&a.run, dev)?;
    let reference_dir = a.reference.clone().unwrap_or_else(|| a.run.policy.clone());
    let reference: Llama<D> = Checkpoint::load(&reference_dir, dev)
        .with_context(|| {
            format!(
                "cannot load the reference policy {}",
                reference_dir.display()
            )
        })?
        .model;
    let opts = DataOptions {
        margins: MarginTable::off(),
        aggregation: a.aggregation,
    };
    let q = annotation_server::api::ExportQuery {
        round_id: a.round_id,
        ..Default::default()
    };
    let pairs = reward_model::data::read_sources(
        &a.data,
        a.server.as_deref(),
        a.token.as_deref(),
        &q,
        &opts,
    )?;
    let (encoded, dropped) = encode_preferences(&tok, &pairs, a.max_len)?;
    if dropped > 0 {
        eprintln!("dropped {dropped} pairs longer than {} tokens", a.max_len);
    }
    let (train, eval): (Vec<PreferencePair>, Vec<PreferencePair>) = match &a.eval_data {
        Some(p) => (
            encoded,
            encode_preferences(&tok, &read_pairs(p, &opts)?, a.max_len)?.0,
        ),
        // pairs of one prompt stay on one side
        None => reward_model::train::split_by_group(
            encoded,
            |p| p.prompt.clone(),
            a.eval_fraction,
            a.opt.seed,
        )?,
    };
    if train.is_empty() {
        bail!("no training pairs left (read {} pairs)", pairs.len());
    }
    let dcfg = DpoConfig {
        loss: a.loss,
        beta: a.beta,
        label_smoothing: a.label_smoothing,
        rpo_alpha: a.rpo_alpha,
    };
    let cfg = a.opt.apply(LoopConfig {
        lr: 1e-6,
        ..LoopConfig::default()
    });
    eprintln!(
        "computing reference log-probs of {} pairs",
        train.len() + eval.len()
    );
    let mut stage = DpoStage::new(
        dcfg,
        &reference,
        train,
        eval,
        PolicyFiles::of(&ck),
        a.opt.micro_batch * 2,
    )?;
    drop(reference);
    finish_loop(&mut ck.model, &mut stage, &cfg, &a.run, resume)
}

fn sampling<D: Dev>(
    ck: &Checkpoint<D>,
    tok: &Tokenizer,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    max_new_tokens: usize,
    seed: u64,
) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop_tokens: stop_tokens(ck, tok),
    }
}

/// The side files of a rejection-sampling run whose model goes to `out`.
pub fn rs_paths(out: &Path) -> (PathBuf, PathBuf, PathBuf) {
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

fn rs_cmd<D: Dev>(a: &RsArgs, dev: &D) -> Result<()> {
    let (mut ck, tok, resume) = start(&a.run, dev)?;
    let (samples_path, best_path, report_path) = rs_paths(&a.run.out);
    let kept = if resume.is_some() && best_path.is_file() {
        eprintln!(
            "using the responses already selected in {}",
            best_path.display()
        );
        rs::read_samples(&best_path)?
    } else {
        let reward = a.reward.load(dev)?;
        crate::reward::check_vocab(&reward, ck.model.cfg.vocab_size)?;
        let prompts = read_prompts(&a.prompts, &tok)?;
        let cfg = RsConfig {
            k: a.k,
            sampling: sampling(
                &ck,
                &tok,
                a.temperature,
                a.top_k,
                a.top_p,
                a.max_new_tokens,
                a.opt.seed,
            ),
            gen_batch: a.gen_batch,
            progress: !a.opt.quiet,
        };
        eprintln!(
            "sampling {} responses for {} prompts",
            a.k * prompts.len(),
            prompts.len()
        );
        let mut samples = rs::generate_samples(&ck.model, &tok, &prompts, &cfg)?;
        // earlier rounds' best are re-scored with this round's reward, in the
        // same call as this round's samples, so all rewards share one scale
        let current = samples.len();
        for p in &a.pool {
            samples.extend(rs::read_samples(p)?);
        }
        rs::score(&mut samples, &prompts, &tok, &reward)?;
        let pool = samples.split_off(current);
        let kept = rs::select_best(&samples, &pool, a.keep_truncated);
        let report = rs::report(&samples, &kept, prompts.len(), &cfg);
        rs::write_samples(&samples_path, &samples)?;
        rs::write_samples(&best_path, &kept)?;
        policy::safetensors_io::write_file_synced(
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
            if a.keep_truncated {
                ""
            } else {
                " or hit --max-new-tokens without a stop token (raise --max-new-tokens, or pass --keep-truncated)"
            }
        );
    }
    let cfg = a.opt.apply(sft_defaults());
    let mut stage = SftStage {
        train,
        eval: vec![],
        files: PolicyFiles::of(&ck),
        eval_batch: a.opt.micro_batch * 2,
        name: "rs",
    };
    finish_loop(&mut ck.model, &mut stage, &cfg, &a.run, resume)
}

fn ppo_cmd<D: Dev>(a: &PpoArgs, dev: &D) -> Result<()> {
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
    let reward = a.reward.load(dev)?;
    let reference_dir = a.reference.clone().unwrap_or_else(|| a.run.policy.clone());
    let reference_ck = Checkpoint::load(&reference_dir, dev).with_context(|| {
        format!(
            "cannot load the reference policy {}",
            reference_dir.display()
        )
    })?;
    let ref_tok = Tokenizer::load(&reference_dir)?;
    cfg.sampling.stop_tokens = stop_tokens(&reference_ck, &ref_tok);
    let reference = reference_ck.model;
    let resumed = if policy::out_dir::check_training(&a.run.out, a.run.resume, a.run.overwrite)? {
        ppo::load_checkpoint(&a.run.out, dev)?
    } else {
        None
    };
    let (mut models, state, tok) = match resumed {
        Some(c) => {
            eprintln!("resuming {}", a.run.out.display());
            (
                PpoModels {
                    actor: c.actor,
                    critic: c.critic,
                    reference,
                    files: c.files,
                },
                Some(c.state),
                Tokenizer::load(&a.run.out)?,
            )
        }
        None => {
            let (ck, tok) = load_policy(&a.run.policy, dev)?;
            let critic = match a
                .value_model
                .as_ref()
                .or(a.reward.reward_model.as_ref())
                .or(a.reward.helpfulness_model.as_ref())
            {
                Some(dir) => RewardModel::load_or_init(dir, dev, a.opt.seed)?,
                None => RewardModel::from_policy(&a.run.policy, dev, a.opt.seed)?,
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
    let prompts = read_prompts(&a.prompts, &tok)?;
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
        &a.run.out,
        state,
    )?;
    if !o.finished {
        return train_loop::stopped_early(o.iterations, o.total_iterations, &a.run.out);
    }
    eprintln!(
        "last iteration: score {:.4}, kl {:.4}",
        o.last["objective/scores"].as_f64().unwrap_or(0.0),
        o.last["objective/kl"].as_f64().unwrap_or(0.0)
    );
    eprintln!(
        "wrote {} (metrics: {})",
        a.run.out.display(),
        metrics_path(&a.run.out).display()
    );
    Ok(())
}
