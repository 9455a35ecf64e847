//! `rlhf demo`: the whole loop on one machine with no set-up. Starts the
//! annotation server on a SQLite file, builds a tiny demo policy (a tokenizer
//! and SFT on the task's mixed-quality corpus, so it starts mediocre), imports
//! the task's prompts, and runs rounds with simulated labelers while the UI
//! stays open for a human to label too. Prints a table per round and writes
//! the same numbers to `OUT/report.json`.
use crate::data::sft_example;
use crate::eval::{evaluate, EvalSetup};
use crate::policy_io::{load_policy, PolicyFiles};
use crate::round::{self, eval_prompts, Ctx, Recipe};
use crate::sft::SftStage;
use crate::simulate::{ensure_bots, label_until_done, SimConfig};
use crate::tasks::{task, Task};
use crate::round::StageSettings;
use crate::worker::{claim, queue, round_config, StartArgs};
use anyhow::{bail, Context, Result};
use annotation_server::api::client::Client;
use annotation_server::api::PromptImport;
use clap::Args;
use dfdx::prelude::Cpu;
use policy::cli::{init, stop_tokens, DeviceKind, InitArgs, Preset};
use policy::config::DType;
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
    let l = std::net::TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
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
    loop {
        if std::net::TcpStream::connect(bind).is_ok() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the annotation server did not start; see {}", out.join("server.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = Command::new(&exe).args(["token", "create", "--username", "admin", "--database-url", &db]).output()?;
    if !o.status.success() {
        bail!("cannot create an API token: {}", String::from_utf8_lossy(&o.stderr));
    }
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok((server, url, token))
}

fn add_human(out: &Path, password: &str) -> Result<()> {
    let db = format!("sqlite://{}", out.join("annotations.sqlite").display());
    let mut c = Command::new(std::env::current_exe()?)
        .args(["user", "add", "--role", "labeler", "--username", "you", "--password-stdin", "--database-url", &db])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!("cannot create the labeler account: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// Builds the demo policy: a tokenizer and a tiny Llama trained on the task's corpus.
pub fn build_policy(t: &dyn Task, dir: &Path, seed: u64, quiet: bool) -> Result<PathBuf> {
    let sft_out = dir.join("policy-sft");
    if crate::round::finished(&sft_out) {
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
    };
    let dev = Cpu::default();
    init(&a, &dev)?;
    let (mut ck, tok) = load_policy(&base, &dev)?;
    let data = corpus.iter().map(|(p, c)| sft_example(&tok, &json!({"prompt": p, "completion": c}))).collect::<Result<Vec<_>>>()?;
    let mut stage = SftStage { train: data, eval: vec![], files: PolicyFiles::of(&ck), eval_batch: 64, name: "sft" };
    let cfg = LoopConfig { lr: 3e-3, batch_size: 32, micro_batch: 32, epochs: 2.0, schedule: ScheduleKind::Cosine, log_every: 10, progress: !quiet, seed, ..LoopConfig::default() };
    if !quiet {
        eprintln!("pre-training the demo policy on {} examples of the `{}` task", stage.train.len(), t.name());
    }
    train_loop::run(&mut ck.model, &mut stage, &cfg, &sft_out, None)?;
    Ok(sft_out)
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// Runs `rlhf demo`.
pub fn run(a: DemoArgs) -> Result<()> {
    let t_all = Instant::now();
    let t = task(&a.task)?;
    let out = match &a.out {
        Some(p) => p.clone(),
        None => PathBuf::from(format!("rlhf-demo-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())),
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
    let source = format!("demo-{}", t.name());
    let prompts: Vec<PromptImport> = t
        .prompts(a.prompts_per_round * a.rounds, a.seed + 1)
        .into_iter()
        .map(|p| PromptImport { prompt: Some(p), source: Some(source.clone()), ..PromptImport::default() })
        .collect();
    client.import_prompts(&prompts)?;

    // bots label whatever appears until the rounds are done
    let bots = ensure_bots(&url, &token, a.bots)?;
    let stop = AtomicBool::new(false);
    let sim = SimConfig { bots: a.bots, temperature: a.bot_temperature, disagreement: 0.0, seed: a.seed, strength_thresholds: [0.6, 0.3, 0.1] };
    let dev = Cpu::default();
    let ctx = Ctx::new(&url, &token, "demo-worker", 600, DeviceKind::Cpu, a.quiet)?;
    let (tok_policy, tok) = load_policy(&policy, &dev)?;
    let eval_set = eval_prompts(t.as_ref(), 64, &tok)?;
    let gold = |p: &str, r: &str| t.gold(p, r);
    let setup = EvalSetup { tok: &tok, stop_tokens: stop_tokens(&tok_policy, &tok), max_new_tokens: 24, seed: 0xE7A1, batch: 64, gold: Some(&gold), reward: None, reference: None, baseline: None };
    let base = evaluate(&tok_policy.model, &eval_set, &setup)?;
    drop(tok_policy);
    println!("| round | recipe | gold reward | RM held-out acc | KL to initial | gold win rate vs previous | time (s) |");
    println!("|---|---|---|---|---|---|---|");
    println!("| 0 (SFT) | - | {} | - | - | - | {:.0} |", fmt(base.gold_reward), t_all.elapsed().as_secs_f64());
    let mut rows = vec![json!({"round": 0, "recipe": "sft", "gold_reward": base.gold_reward, "seconds": t_all.elapsed().as_secs_f64()})];
    let result: Result<()> = std::thread::scope(|s| {
        let labeler = s.spawn(|| -> Result<()> {
            while !stop.load(Ordering::SeqCst) {
                label_until_done(&url, &bots, t.as_ref(), &sim, &stop)?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        let r = (|| -> Result<()> {
            for i in 1..=a.rounds {
                let t0 = Instant::now();
                let sa = StartArgs {
                    recipe: a.recipe,
                    policy: if i == 1 { Some(policy.clone()) } else { None },
                    prompt_source: source.clone(),
                    text_prompts: true,
                    task: Some(t.name().to_string()),
                    workdir: out.join("rounds"),
                    name: None,
                    prompts_per_round: a.prompts_per_round,
                    k: a.k,
                    labels_wanted: a.labels_wanted,
                    temperature: 1.0,
                    max_new_tokens: 24,
                    seed: a.seed,
                    rm_lr: None,
                    rm_steps: None,
                    policy_lr: None,
                    policy_steps: None,
                };
                let (name, mut cfg) = round_config(&client, &sa)?;
                // settings for a tiny model and a few hundred pairs
                cfg.rm = StageSettings { lr: Some(1e-3), steps: Some(a.rm_steps), batch_size: Some(32), epochs: None };
                cfg.rs = StageSettings { lr: Some(1e-3), steps: Some(a.policy_steps), batch_size: Some(16), epochs: None };
                cfg.dpo = StageSettings { lr: Some(5e-4), steps: Some(a.policy_steps), batch_size: Some(16), epochs: None };
                cfg.ppo = StageSettings { lr: Some(3e-4), steps: Some(a.policy_steps / 2), batch_size: Some(16), epochs: None };
                cfg.eval_prompts = 64;
                let queued = queue(&client, &name, &cfg)?;
                let r = claim(&ctx.client, &ctx.worker, ctx.lease_seconds)?.context("the queued round was not claimable")?;
                if r.id != queued.id {
                    bail!("claimed round {} instead of {}", r.id, queued.id);
                }
                let state = round::run(&ctx, &r, &dev)?;
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
        })();
        stop.store(true, Ordering::SeqCst);
        let l = labeler.join().map_err(|_| anyhow::anyhow!("the simulated labelers panicked"))?;
        r.and(l)
    });
    result?;
    let report: Value = json!({"task": t.name(), "recipe": a.recipe.as_str(), "server": url, "seconds": t_all.elapsed().as_secs_f64(), "rounds": rows});
    policy::safetensors_io::write_file_synced(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    eprintln!("wrote {} ({:.0} s)", out.join("report.json").display(), t_all.elapsed().as_secs_f64());
    if a.keep_serving {
        eprintln!("the annotation server stays up at {url}; Ctrl-C to stop");
        train_loop::install_interrupt_handler();
        while !train_loop::interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(server);
    Ok(())
}
