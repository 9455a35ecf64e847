//! `rlhf rm …`: train, evaluate and score reward models.
use crate::combine::{RewardInput, SafetyHelpfulness, Source};
use crate::data::{encode_pairs, read_pairs, Aggregation, Content, DataOptions, Encoder};
use crate::loss::MarginTable;
use crate::model::RewardModel;
use crate::train::{evaluate, load_checkpoint, metrics_path, split_held_out, train, TrainConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use policy::device::{DeviceKind, OnDevice};
use policy::model::Dev;
use policy::train_loop::LoopArgs;
use serde_json::{json, Value};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// `rlhf rm [--device D] <command>`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Device to run the model on.
    #[arg(long, value_enum, default_value = "cpu", global = true)]
    pub device: DeviceKind,
    #[command(subcommand)]
    pub command: RmCommand,
}

/// `rlhf rm` subcommands.
#[derive(Subcommand, Debug)]
pub enum RmCommand {
    /// Train a reward model on preference pairs (TRL JSONL or ranked comparisons).
    Train(Box<TrainArgs>),
    /// Evaluate a reward model on preference pairs: accuracy overall and by strength, calibration.
    Eval(EvalArgs),
    /// Score responses (JSONL in, JSONL out).
    Score(ScoreArgs),
}

/// How preference files are read.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Margin per strength level: large (Llama-2: 3,2,1,0), small (1,2/3,1/3,0), off, or four numbers.
    #[arg(long, default_value = "large", value_parser = parse_margins)]
    pub margins: MarginTable,
    /// Use every labeler's judgment, or one majority pair per response pair.
    #[arg(long, value_enum, default_value = "per-labeler")]
    pub aggregation: Aggregation,
    /// Drop pairs longer than this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
}

fn parse_margins(s: &str) -> Result<MarginTable, String> {
    MarginTable::parse(s).map_err(|e| e.to_string())
}

/// Options of `rlhf rm train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Preference data (JSONL; repeat for several files). With --resume, the
    /// saved run's data sources are used when no source is given.
    #[arg(long, required_unless_present_any = ["server", "resume"])]
    pub data: Vec<PathBuf>,
    /// Also read the annotation server's judgments over HTTP (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub server: Option<String>,
    /// Researcher API token for --server.
    #[arg(long, env = "RLHF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --server: only this batch.
    #[arg(long)]
    pub batch_id: Option<i64>,
    /// With --server: only batches of this round.
    #[arg(long)]
    pub round_id: Option<i64>,
    /// Starting checkpoint: a policy (e.g. the SFT model; a new head is added) or a reward model.
    /// Not needed with --resume when OUT holds a checkpoint.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Output reward-model directory (HF LlamaForSequenceClassification + trainer_state/).
    /// Metrics go to OUT.metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run saved in OUT (same data and settings), exactly.
    #[arg(long)]
    pub resume: bool,
    /// Replace what is at OUT (a non-empty directory, a file, an earlier run);
    /// the new output is built beside it and swapped in at the end.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Held-out preference data; default: a split of --data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Fraction of comparisons held out when --eval-data is not given.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f32,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Weight of the reward-centering term c·mean((r_c + r_r)²) (e.g. 0.01); 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub centering: f32,
    #[command(flatten)]
    pub opt: LoopArgs,
}

/// Options of `rlhf rm eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Reward-model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Preference data (JSONL).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Write the report (JSON) here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

/// Options of `rlhf rm score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Reward-model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL: {"prompt", "response"} (strings or chat messages), {"messages": [...]}, or {"text"}.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL: {"reward": normalized, "score": raw} per input line (plus its "id", if any).
    /// With --safety-model: {"reward": combined, "source", "safety", "helpfulness"}.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// A safety reward model: combine it with --model (helpfulness) as Llama-2 did, whitened over the file.
    /// A line's prompt is unsafe when it has "unsafe": true or a "tags" list containing
    /// "unsafe" or "safety" (any case), as for `rlhf rs` and `rlhf ppo`.
    #[arg(long)]
    pub safety_model: Option<PathBuf>,
    /// Safety threshold of the combination (Llama-2: 0.15).
    #[arg(long, default_value_t = 0.15, requires = "safety_model")]
    pub safety_threshold: f32,
}

/// Runs a `rlhf rm` subcommand on the chosen device.
pub fn run(args: RmArgs) -> Result<()> {
    args.device.dispatch(args.command)
}

impl OnDevice for RmCommand {
    fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
        run_on(self, dev)
    }
}

fn run_on<D: Dev>(cmd: RmCommand, dev: &D) -> Result<()> {
    match cmd {
        RmCommand::Train(a) => train_cmd(&a, dev),
        RmCommand::Eval(a) => eval_cmd(&a, dev),
        RmCommand::Score(a) => score_cmd(&a, dev),
    }
}

fn data_options(a: &DataArgs) -> DataOptions {
    DataOptions {
        margins: a.margins,
        aggregation: a.aggregation,
    }
}

fn train_cmd<D: Dev>(a: &TrainArgs, dev: &D) -> Result<()> {
    let resuming = policy::out_dir::check_training(&a.out, a.resume, a.overwrite)?;
    // `--resume` alone: the saved run's own data sources
    let saved;
    let a = match policy::train_state::progress(&a.out) {
        Some(p) if resuming && a.data.is_empty() && a.server.is_none() => {
            saved = with_saved_sources(a, &p["settings"]["sources"])?;
            &saved
        }
        _ => a,
    };
    let resume = if resuming {
        load_checkpoint(&a.out, dev)?
    } else {
        if a.resume && a.init.is_none() {
            bail!(
                "--resume: {} holds no training state to resume, and no --init was given",
                a.out.display()
            );
        }
        None
    };
    let (mut rm, tok_dir, opt) = match resume {
        Some((rm, opt, progress)) => {
            eprintln!("resuming {} at step {}", a.out.display(), opt.step);
            (rm, a.out.clone(), Some((opt, progress)))
        }
        None => {
            let init = a.init.as_ref().context(
                "--init is required: a policy checkpoint (e.g. the SFT model) or a reward model",
            )?;
            (
                RewardModel::load_or_init(init, dev, a.opt.seed)?,
                init.clone(),
                None,
            )
        }
    };
    let enc = Encoder::load(&tok_dir)?;
    let opts = data_options(&a.data_args);
    let q = annotation_server::api::ExportQuery {
        batch_id: a.batch_id,
        round_id: a.round_id,
        ..Default::default()
    };
    let pairs =
        crate::data::read_sources(&a.data, a.server.as_deref(), a.token.as_deref(), &q, &opts)?;
    let (encoded, dropped) = encode_pairs(&enc, &pairs, a.data_args.max_len)?;
    let (train_pairs, eval_pairs) = match &a.eval_data {
        Some(p) => {
            let (e, d2) = encode_pairs(&enc, &read_pairs(p, &opts)?, a.data_args.max_len)?;
            if d2 > 0 {
                eprintln!(
                    "dropped {d2} held-out pairs longer than {} tokens",
                    a.data_args.max_len
                );
            }
            (encoded, e)
        }
        None => split_held_out(encoded, a.eval_fraction, a.opt.seed)?,
    };
    if dropped > 0 {
        eprintln!(
            "dropped {dropped} pairs longer than {} tokens",
            a.data_args.max_len
        );
    }
    if train_pairs.is_empty() {
        bail!(
            "no training pairs left (read {} pairs from {} file(s){})",
            pairs.len(),
            a.data.len(),
            if a.server.is_some() {
                " and the server"
            } else {
                ""
            }
        );
    }
    // a resumed run keeps its saved settings where no flag says otherwise
    let base = opt
        .as_ref()
        .and_then(|(_, p)| serde_json::from_value(p["config"].clone()).ok())
        .unwrap_or_else(|| TrainConfig::default().loop_config());
    let mut cfg = TrainConfig::from_loop(
        &a.opt.apply(base),
        a.centering,
        a.opt.micro_batch.max(1) * 2,
    );
    cfg.sources = sources_json(a);
    eprintln!(
        "training on {} pairs, {} held out, {} steps",
        train_pairs.len(),
        eval_pairs.len(),
        cfg.total_steps(train_pairs.len())
    );
    policy::train_loop::install_interrupt_handler();
    let o = train(&mut rm, &train_pairs, &eval_pairs, &cfg, &a.out, opt)?;
    if !o.finished {
        return policy::train_loop::stopped_early(o.steps, o.total_steps, &a.out);
    }
    if let Some(r) = &o.eval {
        eprintln!(
            "held-out: accuracy {:.4}, loss {:.4}, mean margin {:.4}, ECE {:.4}",
            r.accuracy, r.loss, r.mean_margin, r.ece
        );
    }
    eprintln!(
        "wrote {} (metrics: {})",
        a.out.display(),
        metrics_path(&a.out).display()
    );
    Ok(())
}

/// The data sources of a run, as saved with its checkpoint.
fn sources_json(a: &TrainArgs) -> Value {
    json!({
        "data": a.data,
        "server": a.server,
        "batch_id": a.batch_id,
        "round_id": a.round_id,
        "eval_data": a.eval_data,
        "eval_fraction": a.eval_fraction,
    })
}

/// `a` with the data sources of the saved run (`--resume` without `--data`).
fn with_saved_sources(a: &TrainArgs, saved: &Value) -> Result<TrainArgs> {
    if saved.is_null() {
        bail!("{}: the saved run does not record its data; pass --data (or --server) as in the original run", a.out.display());
    }
    fn field<T: serde::de::DeserializeOwned>(saved: &Value, k: &str) -> Option<T> {
        serde_json::from_value(saved[k].clone()).ok()
    }
    let data: Vec<PathBuf> =
        field(saved, "data").context("the saved data sources are unreadable")?;
    let server: Option<String> = field(saved, "server").flatten();
    if data.is_empty() && server.is_none() {
        bail!(
            "{}: the saved run has no data sources; pass --data",
            a.out.display()
        );
    }
    eprintln!(
        "resuming on the saved run's data: {}{}",
        data.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        server
            .as_deref()
            .map(|s| format!(" and {s}"))
            .unwrap_or_default()
    );
    Ok(TrainArgs {
        data,
        server,
        batch_id: field(saved, "batch_id").flatten(),
        round_id: field(saved, "round_id").flatten(),
        eval_data: field(saved, "eval_data").flatten(),
        eval_fraction: field(saved, "eval_fraction").unwrap_or(a.eval_fraction),
        token: a.token.clone(),
        init: a.init.clone(),
        out: a.out.clone(),
        resume: a.resume,
        overwrite: a.overwrite,
        data_args: a.data_args.clone(),
        centering: a.centering,
        opt: a.opt.clone(),
    })
}

fn eval_cmd<D: Dev>(a: &EvalArgs, dev: &D) -> Result<()> {
    let rm = RewardModel::load(&a.model, dev)?;
    let enc = Encoder::load(&a.model)?;
    let pairs = read_pairs(&a.data, &data_options(&a.data_args))?;
    let (encoded, dropped) = encode_pairs(&enc, &pairs, a.data_args.max_len)?;
    if encoded.is_empty() {
        bail!("{}: no pairs to evaluate", a.data.display());
    }
    let mut report = serde_json::to_value(evaluate(&rm, &encoded, a.batch_size)?)?;
    report["dropped_too_long"] = json!(dropped);
    let text = serde_json::to_string_pretty(&report)?;
    match &a.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => writeln!(std::io::stdout().lock(), "{text}")?,
    }
    Ok(())
}

/// One line of `rlhf rm score` input as (prompt, response).
pub fn parse_score_line(v: &Value) -> Result<(Content, Content)> {
    let obj = v.as_object().context("each line must be a JSON object")?;
    if let Some(m) = obj.get("messages") {
        let Content::Chat(msgs) = Content::from_json(m, "messages")? else {
            bail!("`messages` must be a list of chat messages")
        };
        if msgs.is_empty() {
            bail!("`messages` is empty");
        }
        return Ok((Content::Chat(vec![]), Content::Chat(msgs)));
    }
    if let Some(t) = obj.get("text") {
        return Ok((Content::Text(String::new()), Content::from_json(t, "text")?));
    }
    let prompt = match obj.get("prompt") {
        Some(p) => Content::from_json(p, "prompt")?,
        None => bail!("a line needs `prompt` and `response`, `messages`, or `text`"),
    };
    let resp = obj
        .get("response")
        .or_else(|| obj.get("completion"))
        .context("missing `response`")?;
    Ok((prompt, Content::from_json(resp, "response")?))
}

fn score_cmd<D: Dev>(a: &ScoreArgs, dev: &D) -> Result<()> {
    let rm = RewardModel::load(&a.model, dev)?;
    let enc = Encoder::load(&a.model)?;
    let input = std::fs::File::open(&a.input)
        .with_context(|| format!("cannot open {}", a.input.display()))?;
    let mut seqs = vec![];
    let mut ids = vec![];
    let mut unsafe_flags = vec![];
    for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", a.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", a.input.display(), i + 1);
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let (p, r) = parse_score_line(&v).with_context(at)?;
        seqs.push(enc.encode(&p, &r).with_context(at)?);
        ids.push(v.get("id").cloned());
        unsafe_flags.push(crate::data::is_unsafe_prompt(&v));
    }
    if let Some(safety_dir) = &a.safety_model {
        let safety = RewardModel::load(safety_dir, dev)?;
        let mut combo = SafetyHelpfulness::new(safety, rm)?;
        combo.threshold = a.safety_threshold;
        combo.batch_size = a.batch_size;
        let inputs: Vec<RewardInput> = seqs
            .into_iter()
            .zip(&unsafe_flags)
            .map(|(tokens, &u)| RewardInput {
                tokens,
                unsafe_prompt: u,
            })
            .collect();
        let scored = combo.score(&inputs)?;
        write_jsonl_atomic(&a.output, scored.iter().zip(&ids).map(|(c, id)| {
            let src = match c.source {
                Source::Safety => "safety",
                Source::Helpfulness => "helpfulness",
            };
            let mut o = json!({"reward": c.reward, "source": src, "safety": c.safety, "helpfulness": c.helpfulness});
            if let Some(id) = id {
                o["id"] = id.clone();
            }
            o
        }))?;
        eprintln!(
            "scored {} lines with safety + helpfulness into {}",
            scored.len(),
            a.output.display()
        );
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(seqs.len() as u64);
    let mut raw = vec![];
    for chunk in seqs.chunks(a.batch_size.max(1) * 8) {
        raw.extend(rm.raw_scores(chunk, a.batch_size)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_jsonl_atomic(
        &a.output,
        raw.iter().zip(&ids).map(|(&s, id)| {
            let mut o = json!({"reward": rm.normalization.apply(s), "score": s});
            if let Some(id) = id {
                o["id"] = id.clone();
            }
            o
        }),
    )?;
    eprintln!("scored {} lines into {}", raw.len(), a.output.display());
    Ok(())
}

fn write_jsonl_atomic(path: &Path, lines: impl Iterator<Item = Value>) -> Result<()> {
    let tmp = path.with_extension("jsonl.partial");
    let mut w = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    for l in lines {
        writeln!(w, "{l}")?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
