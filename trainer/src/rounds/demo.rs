//! `rlhf demo`: the whole loop on one machine with no set-up. Starts the
//! annotation server on a SQLite file, builds a tiny demo policy (a tokenizer
//! and SFT on the task's mixed-quality corpus, so it starts mediocre), imports
//! the task's prompts, and runs rounds with simulated labelers while the UI
//! stays open for a human to label too. Prints a table per round and writes
//! the same numbers to `OUT/report.json`.
use super::config::{Recipe, WorkerDefaults};
use super::eval::{evaluate, EvalSetup};
use super::heartbeat::{self, Ctx};
use super::labelers::{ensure_bots, label_until_done, SimConfig};
use super::steps;
use super::tasks::eval_prompts;
use super::tasks::{task, Task};
use super::worker::claim;
use crate::data::sft_example;
use crate::policy_io::{load_policy, PolicyFiles};
use crate::sft::SftStage;
use annotation_server::api::client::Client;
use annotation_server::api::{NewRound, RoundStatus};
use anyhow::{bail, Context, Result};
use clap::Args;
use dfdx::prelude::Cpu;
use policy::cli::{init, InitArgs, Preset};
use policy::config::DType;
use policy::generate::stop_tokens;
use policy::train_loop::{self, LoopConfig, ScheduleKind};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `rlhf demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (default: a new `rlhf-demo-<time>` folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The task: review (positive reviews; gold = sentiment lexicon) or arithmetic (gold = correctness).
    #[arg(long, default_value = "review")]
    pub task: String,
    /// How the policy is improved each round.
    #[arg(long, value_enum, default_value = "dpo")]
    pub recipe: Recipe,
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Prompts per round (one comparison each).
    #[arg(long, default_value_t = 48)]
    pub prompts_per_round: usize,
    /// Responses per comparison.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Simulated labelers.
    #[arg(long, default_value_t = 3)]
    pub bots: usize,
    /// Labels per comparison (distinct labelers).
    #[arg(long, default_value_t = 1)]
    pub labels_wanted: u32,
    /// Bradley–Terry noise of the bots (0: always the gold winner).
    #[arg(long, default_value_t = 0.1)]
    pub bot_temperature: f32,
    /// Server address (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: String,
    /// Leave the server running after the rounds (until Ctrl-C).
    #[arg(long)]
    pub keep_serving: bool,
    /// Reward-model steps per round.
    #[arg(long, default_value_t = 60)]
    pub rm_steps: u64,
    /// Policy steps per round (PPO: half as many iterations).
    #[arg(long, default_value_t = 40)]
    pub policy_steps: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
}

/// Stops the server child when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM: graceful shutdown (in-flight requests finish)
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn free_bind(bind: &str) -> Result<String> {
    let l =
        std::net::TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
    Ok(l.local_addr()?.to_string())
}

fn start_server(out: &Path, bind: &str, password: &str) -> Result<(ServerProcess, String, String)> {
    let exe = std::env::current_exe()?;
    let db = format!("sqlite://{}", out.join("annotations.sqlite").display());
    let log = std::fs::File::create(out.join("server.log"))?;
    let child = Command::new(&exe)
        .args(["serve", "--bind", bind, "--database-url", &db])
        .env("RLHF_ADMIN_USERNAME", "admin")
        .env("RLHF_ADMIN_PASSWORD", password)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the annotation server")?;
    let server = ServerProcess(child);
    let url = format!("http://{bind}");
    let t0 = Instant::now();
    // ready when it answers: `serve` binds its port before it sets up the
    // database and the admin account
    let probe = Client::new(&url, "")?;
    loop {
        if probe.healthy() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the annotation server did not start; see {}",
                out.join("server.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Command::new(&exe)
        .args([
            "token",
            "create",
            "--username",
            "admin",
            "--database-url",
            &db,
        ])
        .output()?;
    if !o.status.success() {
        bail!(
            "cannot create an API token: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok((server, url, token))
}

fn add_human(out: &Path, password: &str) -> Result<()> {
    let db = format!("sqlite://{}", out.join("annotations.sqlite").display());
    let mut c = Command::new(std::env::current_exe()?)
        .args([
            "user",
            "add",
            "--role",
            "labeler",
            "--username",
            "you",
            "--password-stdin",
            "--database-url",
            &db,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "cannot create the labeler account: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Builds the demo policy: a tokenizer and a tiny Llama trained on the task's corpus.
pub fn build_policy(t: &dyn Task, dir: &Path, seed: u64, quiet: bool) -> Result<PathBuf> {
    let sft_out = dir.join("policy-sft");
    if super::steps::finished(&sft_out) {
        return Ok(sft_out);
    }
    let corpus = t.corpus(2000, seed);
    let corpus_file = dir.join("corpus.txt");
    let text: String = corpus.iter().map(|(p, c)| format!("{p}{c}\n")).collect();
    std::fs::write(&corpus_file, text)?;
    let base = dir.join("policy-init");
    let a = InitArgs {
        out: base.clone(),
        preset: Preset::Tiny,
        corpus: Some(corpus_file),
        hidden_size: Some(64),
        intermediate_size: Some(128),
        layers: Some(2),
        heads: Some(4),
        kv_heads: Some(2),
        vocab_size: Some(384),
        max_position_embeddings: 256,
        tie_embeddings: false,
        seed,
        dtype: DType::F32,
        // the demo's own directory: a rerun rebuilds it
        overwrite: true,
    };
    let dev = Cpu::default();
    init(&a, &dev)?;
    let (mut ck, tok) = load_policy(&base, &dev)?;
    let data = corpus
        .iter()
        .map(|(p, c)| sft_example(&tok, &json!({"prompt": p, "completion": c})))
        .collect::<Result<Vec<_>>>()?;
    let mut stage = SftStage {
        train: data,
        eval: vec![],
        files: PolicyFiles::of(&ck),
        eval_batch: 64,
        name: "sft",
    };
    let cfg = LoopConfig {
        lr: 3e-3,
        batch_size: 32,
        micro_batch: 32,
        epochs: 2.0,
        schedule: ScheduleKind::Cosine,
        log_every: 10,
        progress: !quiet,
        seed,
        ..LoopConfig::default()
    };
    if !quiet {
        eprintln!(
            "pre-training the demo policy on {} examples of the `{}` task",
            stage.train.len(),
            t.name()
        );
    }
    train_loop::run(&mut ck.model, &mut stage, &cfg, &sft_out, None)?;
    Ok(sft_out)
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// Stage settings for a tiny model and a few hundred pairs (the CLI's defaults suit real models).
fn demo_settings(a: &DemoArgs) -> serde_json::Map<String, Value> {
    let stage =
        |lr: f32, steps: u64, batch: usize| json!({"lr": lr, "steps": steps, "batch_size": batch});
    let v = json!({
        "rm": stage(1e-3, a.rm_steps, 32),
        "rs": stage(1e-3, a.policy_steps, 16),
        "dpo": stage(5e-4, a.policy_steps, 16),
        "ppo": stage(3e-4, a.policy_steps / 2, 16),
        "prompt_format": "text",
        "temperature": 1.0,
        "max_new_tokens": 24,
        "eval_prompts": super::config::defaults::EVAL_PROMPTS,
        "seed": a.seed,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `--keep-serving`: runs the rounds queued on the dashboard, with the bots labeling, until Ctrl-C.
fn serve_queued(ctx: &Ctx, bots: &Bots, dev: &Cpu) -> Result<()> {
    train_loop::install_interrupt_handler();
    bots.labeling(|| -> Result<()> {
        while !train_loop::interrupted() {
            match claim(ctx)? {
                Some(r) => {
                    eprintln!(
                        "running round {} ({}) queued on the dashboard",
                        r.id, r.name
                    );
                    let state = match steps::run(ctx, &r, dev) {
                        Err(e) if heartbeat::lease_lost(&e) => {
                            // cancelled on the dashboard
                            eprintln!("round {} left: {e:#}", r.id);
                            continue;
                        }
                        r => r?,
                    };
                    let e = state.eval.unwrap_or_default();
                    eprintln!(
                        "round {} done: gold reward {}, KL to initial {}, win rate vs previous {}",
                        r.id,
                        fmt(e.gold_reward),
                        fmt(e.kl),
                        fmt(e.win_rate)
                    );
                }
                None => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        Ok(())
    })
}

/// Simulated labelers of the demo.
struct Bots<'a> {
    url: &'a str,
    accounts: Vec<(String, String)>,
    task: &'a dyn Task,
    sim: SimConfig,
}

impl Bots<'_> {
    /// Runs `body` while the bots label whatever appears.
    fn labeling<R>(&self, body: impl FnOnce() -> Result<R>) -> Result<R> {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let labeler = s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::SeqCst) {
                    label_until_done(self.url, &self.accounts, self.task, &self.sim, &stop)?;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(())
            });
            let r = body();
            stop.store(true, Ordering::SeqCst);
            let l = labeler
                .join()
                .map_err(|_| anyhow::anyhow!("the simulated labelers panicked"))?;
            l.and(r)
        })
    }
}

/// Runs `rlhf demo`.
pub fn run(a: DemoArgs) -> Result<()> {
    let t_all = Instant::now();
    let t = task(&a.task)?;
    let out = match &a.out {
        Some(p) => p.clone(),
        None => PathBuf::from(format!(
            "rlhf-demo-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        )),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    let password: String = format!("{:016x}", rand::random::<u64>());
    let bind = free_bind(&a.bind)?;
    let (server, url, token) = start_server(&out, &bind, &password)?;
    let human_password: String = format!("{:012x}", rand::random::<u64>() >> 16);
    add_human(&out, &human_password)?;
    eprintln!("annotation server: {url}  (label too: log in at {url}/login as `you` / `{human_password}`; dashboard as `admin` / `{password}`)");
    let client = Client::new(&url, &token)?;

    let policy = build_policy(t.as_ref(), &out, a.seed, a.quiet)?;
    let source = super::prompts::ensure_prompts(
        &client,
        t.as_ref(),
        (a.prompts_per_round * a.rounds).max(4096),
    )?;

    let sim = SimConfig {
        bots: a.bots,
        temperature: a.bot_temperature,
        disagreement: 0.0,
        seed: a.seed,
        strength_thresholds: [0.6, 0.3, 0.1],
    };
    let bots = Bots {
        url: &url,
        accounts: ensure_bots(&url, &token, a.bots)?,
        task: t.as_ref(),
        sim,
    };
    let dev = Cpu::default();
    let mut ctx = Ctx::new(&url, &token, "demo-worker", 600, a.quiet)?;
    // the demo's rounds are queued like the dashboard's; these fill the rest
    ctx.defaults = WorkerDefaults {
        policy: Some(policy.clone()),
        workdir: out.join("rounds"),
        config: demo_settings(&a),
    };
    let (tok_policy, tok) = load_policy(&policy, &dev)?;
    let eval_set = eval_prompts(t.as_ref(), super::config::defaults::EVAL_PROMPTS, &tok)?;
    let gold = |p: &str, r: &str| t.gold(p, r);
    let setup = EvalSetup {
        tok: &tok,
        stop_tokens: stop_tokens(&tok_policy, &tok),
        max_new_tokens: 24,
        seed: 0xE7A1,
        batch: 64,
        gold: Some(&gold),
        reward: None,
        reference: None,
        baseline: None,
    };
    let base = evaluate(&tok_policy.model, &eval_set, &setup)?;
    drop(tok_policy);
    println!("| round | recipe | gold reward | RM held-out acc | KL to initial | gold win rate vs previous | time (s) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| 0 (SFT) | - | {} | - | - | - | {:.0} |",
        fmt(base.gold_reward),
        t_all.elapsed().as_secs_f64()
    );
    let mut rows = vec![
        json!({"round": 0, "recipe": "sft", "gold_reward": base.gold_reward, "seconds": t_all.elapsed().as_secs_f64()}),
    ];
    bots.labeling(|| -> Result<()> {
            for i in 1..=a.rounds {
                let t0 = Instant::now();
                let config = json!({"recipe": a.recipe.as_str(), "task": t.name(), "prompt_source": source, "prompts_per_round": a.prompts_per_round, "k": a.k, "labels_wanted": a.labels_wanted});
                let queued = client.create_round(&NewRound { name: format!("{source}-{i}"), config: Some(config), status: Some(RoundStatus::Queued.into()) })?;
                let r = claim(&ctx)?.context("the queued round was not claimable")?;
                if r.id != queued.id {
                    bail!("claimed round {} instead of {}", r.id, queued.id);
                }
                let state = steps::run(&ctx, &r, &dev)?;
                let e = state.eval.clone().unwrap_or_default();
                println!(
                    "| {i} | {} | {} | {} | {} | {} | {:.0} |",
                    a.recipe.as_str(),
                    fmt(e.gold_reward),
                    fmt(state.rm_accuracy),
                    fmt(e.kl),
                    fmt(e.win_rate),
                    t0.elapsed().as_secs_f64()
                );
                rows.push(json!({"round": i, "round_id": r.id, "recipe": a.recipe.as_str(), "gold_reward": e.gold_reward, "rm_accuracy": state.rm_accuracy,
                                 "kl_to_initial": e.kl, "win_rate_vs_previous": e.win_rate, "rm_score": e.rm_score, "output": state.output, "seconds": t0.elapsed().as_secs_f64()}));
            }
            Ok(())
    })?;
    let report: Value = json!({"task": t.name(), "recipe": a.recipe.as_str(), "server": url, "seconds": t_all.elapsed().as_secs_f64(), "rounds": rows});
    policy::fs_atomic::write_file_synced(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    eprintln!(
        "wrote {} ({:.0} s)",
        out.join("report.json").display(),
        t_all.elapsed().as_secs_f64()
    );
    if a.keep_serving {
        eprintln!("the annotation server stays up at {url}; rounds queued on its dashboard run here; Ctrl-C to stop");
        serve_queued(&ctx, &bots, &dev)?;
    }
    drop(server);
    Ok(())
}
