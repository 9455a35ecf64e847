//! One alignment round, run by a worker that holds the round's lease on the
//! annotation server: (a) sample K responses per prompt from the round's
//! starting policy, (b) push them as comparisons, (c) wait for the labels,
//! (d) retrain the reward model on all preference data so far, (e) improve
//! the policy with the recipe's stages, (f) evaluate, (g) record the output
//! checkpoint. One function per step.
//!
//! Every step is idempotent and its progress lives in the round's `state` on
//! the server (and in files under the round's work directory): a worker that
//! is killed at any point and restarted continues where it stopped. Samples
//! are written before comparisons are created; comparisons go into the batch
//! `round-<id>`, which is looked up before creating it, so a retry never
//! duplicates them; training stages resume from their checkpoints.
use super::config::{RoundConfig, RoundState, Stage};
use super::eval::{evaluate, EvalReport, EvalSetup};
use super::heartbeat::Ctx;
use super::prompts::{
    as_text_pairs, content_of, pick_prompts, write_pairs, write_prompts, PROMPTS_FILE,
};
use super::tasks::eval_prompts;
use crate::job::{self, RewardSource, RewardSpec, RunSpec};
use crate::reward::Reward;
use annotation_server::api::client::Client;
use annotation_server::api::{
    CreateComparisons, ExportQuery, NewComparison, NewResponse, Round, RoundMetrics, RoundProgress,
    RoundStatus,
};
use anyhow::{bail, Context, Result};
use policy::checkpoint::Checkpoint;
use policy::generate::stop_tokens;
use policy::generate::{generate, SamplingConfig};
use policy::model::Dev;
use policy::tokenizer::Tokenizer;
use reward_model::data::{DataOptions, Pair};
use reward_model::model::RewardModel;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the round reports as it goes: its state and the dashboard's metrics.
struct Progress<'a> {
    ctx: &'a Ctx,
    round: &'a Round,
    state: RoundState,
    /// The dashboard's view; `progress` is set by each report.
    metrics: RoundMetrics,
}

impl Progress<'_> {
    /// Reports the step (the dashboard's progress) and the state so far.
    fn beat(&mut self, step: &str, detail: &str) -> Result<()> {
        self.beat_status(None, step, detail)
    }

    fn beat_status(&mut self, status: Option<RoundStatus>, step: &str, detail: &str) -> Result<()> {
        self.metrics.progress = Some(RoundProgress {
            step: step.into(),
            detail: detail.into(),
        });
        self.ctx
            .beat(self.round.id, status, &self.state, &self.metrics)
    }

    fn say(&self, s: &str) {
        if !self.ctx.quiet {
            eprintln!("round {} ({}): {s}", self.round.id, self.round.name);
        }
    }
}

/// Runs (or continues) `round` on `dev`, keeping its lease alive.
pub fn run<D: Dev>(ctx: &Ctx, round: &Round, dev: &D) -> Result<RoundState> {
    super::heartbeat::keep_alive(ctx, round, || run_steps(ctx, round, dev))
}

/// Runs the round's steps from where its state says it is.
fn run_steps<D: Dev>(ctx: &Ctx, round: &Round, dev: &D) -> Result<RoundState> {
    let mut p = Progress {
        ctx,
        round,
        state: serde_json::from_value(round.state.clone()).unwrap_or_default(),
        metrics: RoundMetrics::default(),
    };
    let cfg = match &p.state.config {
        Some(c) => c.clone(),
        None => {
            let c = super::series::complete_config(&ctx.client, round, &ctx.defaults)?;
            p.state.config = Some(c.clone());
            p.beat("sample", "starting")?;
            c
        }
    };
    let dir = cfg.workdir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if p.state.batch_id.is_none() {
        let batch_id = sample_and_push(&mut p, &cfg, dev)?;
        p.state.batch_id = Some(batch_id);
        p.beat("label", "waiting for labels")?;
    }
    wait_for_labels(&mut p)?;
    let rm_dir = train_reward_model(&mut p, &cfg, dev)?;
    let output = improve_policy(&mut p, &cfg, &rm_dir, dev)?;
    evaluate_policy(&mut p, &cfg, &output, &rm_dir, dev)?;
    p.state.output = Some(output);
    // (g) done
    p.beat_status(Some(RoundStatus::Done), "done", "")?;
    write_plots(&ctx.client, &cfg)?;
    Ok(p.state)
}

/// (a) + (b): samples K responses per prompt from the starting policy and
/// pushes them as comparisons in the batch `round-<id>` (found again, not
/// duplicated, after a restart). Returns the batch.
fn sample_and_push<D: Dev>(p: &mut Progress, cfg: &RoundConfig, dev: &D) -> Result<i64> {
    let (ctx, round) = (p.ctx, p.round);
    let batch_name = format!("round-{}", round.id);
    let existing = ctx
        .client
        .batches()?
        .into_iter()
        .find(|b| b.name == batch_name && b.comparisons > 0);
    if let Some(b) = existing {
        return Ok(b.batch_id);
    }
    p.beat("sample", "sampling responses")?;
    let start = Checkpoint::load(&cfg.policy, dev)
        .with_context(|| format!("round {}: cannot load its starting policy", round.id))?;
    let tok = Tokenizer::load(&cfg.policy)?;
    let stops = stop_tokens(&start, &tok);
    let prompts = pick_prompts(&ctx.client, cfg)?;
    // the policy step trains on exactly these prompts, even if the pool grows meanwhile
    write_prompts(cfg, &cfg.workdir.join(PROMPTS_FILE), &prompts)?;
    p.say(&format!(
        "sampling {} responses for {} prompts",
        cfg.k * prompts.len(),
        prompts.len()
    ));
    let mut comparisons = vec![];
    for (i, prompt) in prompts.iter().enumerate() {
        let content = content_of(cfg, &prompt.messages);
        let ids = crate::data::Encoder { tok: &tok }.prompt(&content)?;
        let sc = SamplingConfig {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_k: 0,
            top_p: 1.0,
            seed: cfg.seed ^ ((round.id as u64) << 32) ^ i as u64,
            stop_tokens: stops.clone(),
        };
        let gens = generate(&start.model, &vec![ids; cfg.k], &sc)?;
        let mut responses = gens
            .iter()
            .map(|g| {
                Ok(NewResponse {
                    // a byte-level model can emit NUL, which the server (rightly) refuses in text
                    text: tok.decode(&g.tokens, true)?.replace('\0', "\u{FFFD}"),
                    model: Some(cfg.policy.display().to_string()),
                    round_id: Some(round.id),
                    sampling: Some(json!({"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens})),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // the server refuses empty and duplicate responses (a pair of equal
        // texts has nothing to prefer): keep distinct ones
        let mut seen = std::collections::HashSet::new();
        responses.retain(|r| {
            let t = r.text.trim().to_string();
            !t.is_empty() && seen.insert(t)
        });
        if responses.len() < 2 {
            p.say(&format!(
                "prompt {}: fewer than 2 distinct non-empty samples; skipped",
                prompt.id
            ));
            continue;
        }
        comparisons.push(NewComparison {
            prompt_id: Some(prompt.id),
            prompt_external_id: None,
            responses,
        });
    }
    if comparisons.is_empty() {
        bail!("no prompt got 2 distinct non-empty samples; raise the temperature or K");
    }
    let req = CreateComparisons {
        batch: batch_name,
        labels_wanted: Some(cfg.labels_wanted),
        round_id: Some(round.id),
        comparisons,
    };
    Ok(ctx.client.create_comparisons(&req)?.batch_id)
}

/// (c): waits until every comparison of the round's batch has its labels.
fn wait_for_labels(p: &mut Progress) -> Result<()> {
    let client = &p.ctx.client;
    let batch_id = p.state.batch_id.context("the round has no batch yet")?;
    let t0 = Instant::now();
    let mut last_beat = Instant::now();
    let mut shown = -1;
    loop {
        let b = client.batch(batch_id)?;
        if b.complete >= b.comparisons {
            break;
        }
        if b.labels != shown {
            p.say(&format!(
                "labels {}/{} ({} comparisons complete of {})",
                b.labels,
                b.labels + b.remaining_labels,
                b.complete,
                b.comparisons
            ));
            shown = b.labels;
        }
        if last_beat.elapsed() > Duration::from_secs(5) {
            let detail = format!("{} of {} labels", b.labels, b.labels + b.remaining_labels);
            p.beat("label", &detail)?;
            last_beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(
            if t0.elapsed() < Duration::from_secs(10) {
                200
            } else {
                1000
            },
        ));
    }
    if let Some(alpha) = client
        .agreement(batch_id)
        .ok()
        .and_then(|a| a.krippendorff_alpha)
    {
        p.metrics.summary.insert("label_agreement".into(), alpha);
    }
    Ok(())
}

/// How the server's labels become pairs: every labeler's judgment, with margins.
fn pair_options() -> DataOptions {
    DataOptions {
        margins: reward_model::loss::MarginTable::default(),
        aggregation: reward_model::data::Aggregation::PerLabeler,
    }
}

/// (d): the reward model, trained on all preference data so far. Returns its directory.
fn train_reward_model<D: Dev>(p: &mut Progress, cfg: &RoundConfig, dev: &D) -> Result<PathBuf> {
    let ctx = p.ctx;
    let rm_dir = cfg.workdir.join("rm");
    let all_pairs = as_text_pairs(
        cfg,
        reward_model::data::fetch_pairs(
            &ctx.server,
            &ctx.token,
            &ExportQuery::default(),
            &pair_options(),
        )?,
    );
    if !finished(&rm_dir) {
        p.beat("reward_model", &format!("{} pairs", all_pairs.len()))?;
        p.say(&format!(
            "training the reward model on {} pairs",
            all_pairs.len()
        ));
        train_rm(cfg, &all_pairs, &rm_dir, dev, ctx.quiet)?;
    }
    if let Ok(text) = std::fs::read_to_string(rm_dir.join("eval_report.json")) {
        if let Some(a) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["accuracy"].as_f64())
        {
            p.state.rm_accuracy = Some(a);
            p.metrics.summary.insert("rm_accuracy".into(), a);
        }
    }
    p.metrics.series.insert(
        "rm_loss".into(),
        metric_series(&reward_model::train::metrics_path(&rm_dir), "loss"),
    );
    Ok(rm_dir)
}

/// (e): the policy, improved by the recipe's stages, each starting from the
/// previous one's output. Returns the last output.
fn improve_policy<D: Dev>(
    p: &mut Progress,
    cfg: &RoundConfig,
    rm_dir: &Path,
    dev: &D,
) -> Result<PathBuf> {
    let (ctx, round) = (p.ctx, p.round);
    let dir = &cfg.workdir;
    p.beat("policy", cfg.recipe.as_str())?;
    let round_pairs: Vec<Pair> = as_text_pairs(
        cfg,
        reward_model::data::fetch_pairs(
            &ctx.server,
            &ctx.token,
            &ExportQuery {
                round_id: Some(round.id),
                ..Default::default()
            },
            &pair_options(),
        )?,
    );
    let prefs = dir.join("preferences.jsonl");
    write_pairs(&prefs, &round_pairs)?;
    let prompts_file = dir.join(PROMPTS_FILE);
    if !prompts_file.is_file() {
        // a round whose comparisons came from a killed run that had not written the file
        write_prompts(cfg, &prompts_file, &pick_prompts(&ctx.client, cfg)?)?;
    }
    let mut current = cfg.policy.clone();
    for &stage in cfg.recipe.stages() {
        let name = stage.as_str();
        let out = dir.join(name);
        if !finished(&out) {
            p.say(&format!("{name} from {}", current.display()));
            let run = RunSpec {
                policy: current.clone(),
                out: out.clone(),
                resume: true,
                overwrite: false,
            };
            let jobs = StageJobs {
                cfg,
                rm_dir,
                quiet: ctx.quiet,
            };
            match stage {
                Stage::Rs => job::rs::run(&jobs.rs(run, &prompts_file), dev)?,
                Stage::Dpo => job::dpo::run(&jobs.dpo(run, &prefs), dev)?,
                Stage::Ppo => job::ppo::run(&jobs.ppo(run, &current, &prompts_file), dev)?,
            };
            if !finished(&out) {
                bail!("round {}: the {name} stage stopped before the end (interrupted); run the worker again to continue", round.id);
            }
        }
        let metrics = policy::train_loop::metrics_path(&out);
        if stage == Stage::Ppo {
            p.metrics.series.insert(
                "ppo_reward".into(),
                metric_series(&metrics, "objective/scores"),
            );
            p.metrics
                .series
                .insert("kl".into(), metric_series(&metrics, "objective/kl"));
        } else {
            p.metrics
                .series
                .insert(format!("{name}_loss"), metric_series(&metrics, "loss"));
        }
        current = out;
    }
    Ok(current)
}

/// The jobs of a round's stages: the CLI's defaults except where a round differs.
struct StageJobs<'a> {
    cfg: &'a RoundConfig,
    rm_dir: &'a Path,
    quiet: bool,
}

impl StageJobs<'_> {
    fn reward(&self) -> RewardSpec {
        RewardSpec {
            source: RewardSource::Model(self.rm_dir.to_path_buf()),
            score_batch: 32,
        }
    }

    fn rs(&self, run: RunSpec, prompts: &Path) -> job::rs::RsJob {
        let c = self.cfg;
        job::rs::RsJob {
            k: c.k,
            temperature: c.temperature,
            max_new_tokens: c.max_new_tokens,
            gen_batch: 64,
            train: c
                .rs
                .loop_config(job::sft::default_loop(), c.seed, self.quiet),
            ..job::rs::RsJob::new(run, prompts.to_path_buf(), self.reward())
        }
    }

    fn dpo(&self, run: RunSpec, prefs: &Path) -> job::dpo::DpoJob {
        let c = self.cfg;
        job::dpo::DpoJob {
            // the round's pairs were all labeled for it: train on all of them
            eval_fraction: 0.0,
            max_len: 4096,
            train: c
                .dpo
                .loop_config(job::dpo::defaults::train(), c.seed, self.quiet),
            ..job::dpo::DpoJob::new(run, vec![prefs.to_path_buf()])
        }
    }

    fn ppo(&self, run: RunSpec, start: &Path, prompts: &Path) -> job::ppo::PpoJob {
        let c = self.cfg;
        let mut ppo = crate::ppo::PpoConfig::trl();
        ppo.train = c.ppo.loop_config(ppo.train.clone(), c.seed, self.quiet);
        ppo.temperature = c.temperature;
        ppo.max_new_tokens = c.max_new_tokens;
        job::ppo::PpoJob {
            run,
            // Llama-2: PPO's reference is the policy PPO starts from (in
            // rs+ppo, the rejection-sampling output)
            reference: Some(start.to_path_buf()),
            value_model: Some(self.rm_dir.to_path_buf()),
            prompts: prompts.to_path_buf(),
            reward: self.reward(),
            ppo,
        }
    }
}

/// (f): gold reward, reward-model score, KL and win rate of the round's output.
fn evaluate_policy<D: Dev>(
    p: &mut Progress,
    cfg: &RoundConfig,
    output: &Path,
    rm_dir: &Path,
    dev: &D,
) -> Result<()> {
    p.beat("eval", "evaluating")?;
    let report = evaluate_round(cfg, output, rm_dir, dev)?;
    for (k, v) in [
        ("gold_reward", report.gold_reward),
        ("rm_score", report.rm_score),
        ("kl", report.kl),
        ("win_rate", report.win_rate),
    ] {
        if let Some(v) = v {
            p.metrics.summary.insert(k.into(), v);
        }
    }
    p.state.eval = Some(report);
    Ok(())
}

/// Writes the plots of the round's series (every round of its prompt source,
/// the dashboard's charts) as SVG files into `WORKDIR/plots`.
fn write_plots(client: &Client, cfg: &RoundConfig) -> Result<()> {
    let rounds: Vec<Round> = client
        .rounds()?
        .into_iter()
        .filter(|r| super::series::source_of(r).as_deref() == Some(cfg.prompt_source.as_str()))
        .collect();
    let dir = cfg.workdir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (stem, svg) in annotation_server::plots::all_plots(&rounds) {
        policy::fs_atomic::write_file_synced(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
    }
    Ok(())
}

/// The (step, value) points of one metric in a metrics JSONL file.
fn metric_series(path: &Path, key: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
        .collect()
}

fn train_rm<D: Dev>(
    cfg: &RoundConfig,
    pairs: &[Pair],
    out: &Path,
    dev: &D,
    quiet: bool,
) -> Result<()> {
    use reward_model::train::{load_checkpoint, split_held_out, train, TrainConfig};
    let enc = reward_model::data::Encoder::load(&cfg.initial_policy)?;
    let (encoded, _) = reward_model::data::encode_pairs(&enc, pairs, 4096)?;
    let (tr, ev) = split_held_out(encoded, 0.2, cfg.seed)?;
    if tr.is_empty() {
        bail!("no preference pairs to train the reward model on (were all comparisons ties?)");
    }
    let (mut rm, resume) = match load_checkpoint(out, dev)? {
        Some((rm, opt, progress)) => (rm, Some((opt, progress))),
        None => (
            RewardModel::from_policy(&cfg.initial_policy, dev, cfg.seed)?,
            None,
        ),
    };
    let s = &cfg.rm;
    let tc = TrainConfig {
        lr: s.lr.unwrap_or(1e-5),
        batch_size: s.batch_size.unwrap_or(32),
        micro_batch: 16,
        epochs: s.epochs.unwrap_or(1.0),
        max_steps: s.steps,
        log_every: 1,
        seed: cfg.seed,
        progress: !quiet,
        ..TrainConfig::default()
    };
    policy::train_loop::install_interrupt_handler();
    let o = train(&mut rm, &tr, &ev, &tc, out, resume)?;
    if !o.finished {
        bail!("reward-model training stopped before the end (interrupted); run the worker again to continue");
    }
    Ok(())
}

fn evaluate_round<D: Dev>(
    cfg: &RoundConfig,
    policy_dir: &Path,
    rm_dir: &Path,
    dev: &D,
) -> Result<EvalReport> {
    let Some(task_name) = &cfg.task else {
        return Ok(EvalReport::default());
    };
    let task = super::tasks::task(task_name)?;
    let tok = Tokenizer::load(policy_dir)?;
    let ck = Checkpoint::load(policy_dir, dev)?;
    let initial = Checkpoint::load(&cfg.initial_policy, dev)?;
    let baseline = Checkpoint::load(&cfg.policy, dev)?;
    let reward = Reward::model(rm_dir, dev, 64)?;
    let prompts = eval_prompts(task.as_ref(), cfg.eval_prompts, &tok)?;
    let gold = |p: &str, r: &str| task.gold(p, r);
    let setup = EvalSetup {
        tok: &tok,
        stop_tokens: stop_tokens(&ck, &tok),
        max_new_tokens: cfg.max_new_tokens,
        seed: 0xE7A1,
        batch: 64,
        gold: Some(&gold),
        reward: Some(&reward),
        reference: Some(&initial.model),
        baseline: Some(&baseline.model),
    };
    evaluate(&ck.model, &prompts, &setup)
}

/// Whether a training output directory holds a finished run.
pub fn finished(dir: &Path) -> bool {
    policy::train_state::steps(dir).is_some_and(|(step, total)| step >= total)
}
