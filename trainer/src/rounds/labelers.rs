//! Simulated labelers (`rlhf label simulate`, issue 6): bot accounts that label
//! through the annotation server's public REST API exactly as humans do
//! (`GET /api/tasks/next`, `POST /api/tasks/{id}/label`), preferring responses
//! by a task's gold reward with Bradley–Terry / Plackett–Luce noise.
//!
//! The choice rule ([`judge`]): each response's utility is its gold reward
//! plus Gumbel noise of scale `temperature`, and the bot ranks by utility
//! (Plackett–Luce). For two responses this is Bradley–Terry:
//! `P(prefer a over b) = σ((gold_a − gold_b) / temperature)`
//! ([`preference_probability`]). With temperature 0 the bot ranks by gold
//! exactly, and responses of equal gold share a rank (it is indifferent).
//! Then, with probability `disagreement`, independently per judgment, the bot
//! swaps its best and runner-up (it "flips its choice"), which makes bots
//! disagree with each other. The strength is set from the gold gap between the
//! chosen response and the runner-up ([`strength_for_gap`]); when the bot chose
//! the worse of the two the strength is "negligibly better". Safety is left
//! unset.
//!
//! Every judgment draws from its own RNG seeded by `(seed, bot index,
//! comparison id)`, so runs are reproducible whatever order the server hands
//! tasks out in.
use super::tasks::Task;
use annotation_server::api::client::{is_transport, Client};
use annotation_server::api::{NewToken, NewUser, Role, Strength, SubmitLabel};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How the bots judge.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Number of bot accounts (`run` creates this many; [`label_until_done`] uses the bots it is given).
    pub bots: usize,
    /// Bradley–Terry noise temperature: P(prefer a over b) = σ((gold_a − gold_b)/temperature); 0 = always the gold winner.
    pub temperature: f32,
    /// Fraction of judgments (0–1) where a bot flips its choice independently of the others (disagreement between bots).
    pub disagreement: f32,
    /// Base seed; each judgment's RNG is seeded by (seed, bot index, comparison id).
    pub seed: u64,
    /// Gold-gap thresholds for strength: significantly better / better / slightly better, else negligibly better.
    pub strength_thresholds: [f32; 3],
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bots: 3,
            temperature: 0.5,
            disagreement: 0.0,
            seed: 0,
            strength_thresholds: [0.6, 0.3, 0.1],
        }
    }
}

impl SimConfig {
    /// Checks the numbers: temperature ≥ 0, disagreement in [0, 1], thresholds finite and non-increasing.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "the temperature must be a finite number ≥ 0 (got {})",
                self.temperature
            );
        }
        if !(0.0..=1.0).contains(&self.disagreement) {
            bail!(
                "the disagreement must be between 0 and 1 (got {})",
                self.disagreement
            );
        }
        let t = self.strength_thresholds;
        if t.iter().any(|x| !x.is_finite()) || t[0] < t[1] || t[1] < t[2] {
            bail!("the strength thresholds must be finite and non-increasing (significantly ≥ better ≥ slightly), got {t:?}");
        }
        Ok(())
    }
}

/// What one bot did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BotStats {
    /// The bot's user name.
    pub username: String,
    /// Labels submitted.
    pub labels: usize,
    /// Tasks skipped (unusable tasks, or labels the server refused, e.g. after a lost lease).
    pub skips: usize,
    /// Labels whose best response (rank 1) has the highest gold reward of the comparison.
    pub gold_winner: usize,
}

/// What a run of [`label_until_done`] did, in total and per bot.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SimStats {
    /// Labels submitted.
    pub labels: usize,
    /// Tasks skipped.
    pub skips: usize,
    /// Labels that put a gold-best response first.
    pub gold_winner: usize,
    /// Per bot, in the order given.
    pub bots: Vec<BotStats>,
}

impl SimStats {
    /// Adds another run's counts (bots matched by user name).
    pub fn add(&mut self, other: &SimStats) {
        self.labels += other.labels;
        self.skips += other.skips;
        self.gold_winner += other.gold_winner;
        for b in &other.bots {
            match self.bots.iter_mut().find(|x| x.username == b.username) {
                Some(x) => {
                    x.labels += b.labels;
                    x.skips += b.skips;
                    x.gold_winner += b.gold_winner;
                }
                None => self.bots.push(b.clone()),
            }
        }
    }
}

/// One bot's judgment of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgment {
    /// Rank per display position, 1 = best; ties share a rank (competition ranking 1, 1, 3).
    pub ranking: Vec<u32>,
    /// Strength of the best over the runner-up.
    pub strength: Strength,
}

/// Bradley–Terry: the probability that a bot prefers a response whose gold
/// reward is `gap` higher than the other's, `σ(gap / temperature)` (for
/// temperature 0: 1, ½ or 0 by the sign of `gap`).
pub fn preference_probability(gap: f32, temperature: f32) -> f32 {
    if temperature <= 0.0 || !temperature.is_finite() {
        return if gap > 0.0 {
            1.0
        } else if gap < 0.0 {
            0.0
        } else {
            0.5
        };
    }
    1.0 / (1.0 + (-gap / temperature).exp())
}

/// The strength level for a gold gap: `≥ t[0]` significantly better, `≥ t[1]`
/// better, `≥ t[2]` slightly better, else (also for a negative or NaN gap)
/// negligibly better.
pub fn strength_for_gap(gap: f32, thresholds: [f32; 3]) -> Strength {
    if gap >= thresholds[0] {
        Strength::SignificantlyBetter
    } else if gap >= thresholds[1] {
        Strength::Better
    } else if gap >= thresholds[2] {
        Strength::SlightlyBetter
    } else {
        Strength::NegligiblyBetter
    }
}

/// A standard Gumbel draw.
fn gumbel<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // u in (0, 1): both logarithms finite
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    -(-u.ln()).ln()
}

/// Judges responses with gold rewards `gold` (by display position) under
/// `cfg`'s temperature, disagreement and strength thresholds: the rule in the
/// [module docs](self). NaN rewards count as the worst. An empty `gold` gives
/// an empty ranking.
pub fn judge<R: Rng + ?Sized>(gold: &[f32], cfg: &SimConfig, rng: &mut R) -> Judgment {
    let g: Vec<f32> = gold
        .iter()
        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
        .collect();
    let t = if cfg.temperature.is_finite() {
        cfg.temperature.max(0.0)
    } else {
        0.0
    };
    let utility: Vec<f64> = g
        .iter()
        .map(|&x| {
            if t > 0.0 {
                x as f64 + t as f64 * gumbel(rng)
            } else {
                x as f64
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| utility[b].total_cmp(&utility[a]));
    // groups of equal utility, best first
    let mut groups: Vec<Vec<usize>> = vec![];
    for i in order {
        match groups.last_mut() {
            Some(last) if utility[last[0]] == utility[i] => last.push(i),
            _ => groups.push(vec![i]),
        }
    }
    let flip: f32 = rng.gen();
    if flip < cfg.disagreement && groups.len() >= 2 {
        groups.swap(0, 1);
    }
    let mut ranking = vec![0u32; g.len()];
    let mut rank = 1u32;
    for group in &groups {
        for &i in group {
            ranking[i] = rank;
        }
        rank += group.len() as u32;
    }
    let strength = match (groups.first(), groups.get(1)) {
        (Some(best), Some(next)) => {
            strength_for_gap(g[best[0]] - g[next[0]], cfg.strength_thresholds)
        }
        _ => Strength::NegligiblyBetter,
    };
    Judgment { ranking, strength }
}

/// The seed of one judgment: a mix of the run's seed, the bot and the comparison.
pub fn judgment_seed(seed: u64, bot: usize, comparison_id: i64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(splitmix(seed) ^ bot as u64) ^ comparison_id as u64)
}

// ---------------------------------------------------------------------------
// accounts

/// The bots' user names: `sim-bot-0`, `sim-bot-1`, ...
pub fn bot_name(i: usize) -> String {
    format!("sim-bot-{i}")
}

/// Creates (or reuses) `n` bot labeler accounts `sim-bot-{i}` and returns
/// `(username, API token)` for each, in order. Needs an admin token. Each call
/// creates new tokens (the old ones stay valid); a disabled bot account is an
/// error.
pub fn ensure_bots(server: &str, admin_token: &str, n: usize) -> Result<Vec<(String, String)>> {
    let client = Client::new(server, admin_token)?;
    let base = server.trim_end_matches('/');
    // an unreachable server and a refused call each get their own explanation
    let explain = |e: anyhow::Error, what: &str| {
        if is_transport(&e) {
            e.context(format!("cannot reach the annotation server at {base}"))
        } else {
            e.context(what.to_string())
        }
    };
    let users = client.users().map_err(|e| {
        explain(
            e,
            "listing users to create bot accounts (this needs an admin token)",
        )
    })?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let username = bot_name(i);
        match users.iter().find(|u| u.username == username) {
            Some(u) if u.disabled => {
                bail!("the bot account {username} is disabled; enable it or remove it first")
            }
            Some(_) => {}
            None => {
                let body = NewUser {
                    username: username.clone(),
                    password: format!("{:032x}", rand::random::<u128>()),
                    role: Role::Labeler,
                };
                // taken meanwhile: created concurrently by another run; reuse it
                client
                    .create_user(&body)
                    .map_err(|e| explain(e, &format!("creating the bot account {username}")))?;
            }
        }
        let created = client
            .create_token(
                &username,
                &NewToken {
                    name: Some("rlhf label simulate".into()),
                    ..Default::default()
                },
            )
            .map_err(|e| explain(e, &format!("creating a token for {username}")))?;
        out.push((username, created.token));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// labeling

/// The text the gold reward judges: the last user message (else the last message).
fn prompt_text(task: &annotation_server::api::Task) -> String {
    task.prompt
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or(task.prompt.last())
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// Gold rewards by display position, or `None` when positions are not `0..k` (k ≥ 2).
fn gold_by_position(task: &annotation_server::api::Task, t: &dyn Task) -> Option<Vec<f32>> {
    let k = task.responses.len();
    if k < 2 {
        return None;
    }
    let prompt = prompt_text(task);
    let mut gold = vec![f32::NAN; k];
    let mut seen = vec![false; k];
    for r in &task.responses {
        if r.position >= k || seen[r.position] {
            return None;
        }
        seen[r.position] = true;
        gold[r.position] = t.gold(&prompt, &r.text);
    }
    Some(gold)
}

/// How often a bot retries after a transport or server error before giving up.
const MAX_ERRORS: u32 = 3;

fn bot_loop(
    server: &str,
    index: usize,
    username: &str,
    token: &str,
    task: &dyn Task,
    cfg: &SimConfig,
    stop: &AtomicBool,
) -> Result<BotStats> {
    let client = Client::new(server, token)?;
    let mut stats = BotStats {
        username: username.to_string(),
        ..Default::default()
    };
    let mut errors = 0u32;
    let mut empty = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let t = match client.next_task() {
            Ok(t) => t,
            Err(e) => {
                errors += 1;
                if errors >= MAX_ERRORS {
                    let what = if is_transport(&e) {
                        "cannot reach the annotation server at"
                    } else {
                        "cannot get a task from"
                    };
                    return Err(e.context(format!("{what} {server}")));
                }
                std::thread::sleep(Duration::from_millis(100 * errors as u64));
                continue;
            }
        };
        let Some(t) = t else {
            // the server may also answer "nothing now" under contention: look twice
            empty += 1;
            if empty >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        empty = 0;
        let started = Instant::now();
        let Some(gold) = gold_by_position(&t, task) else {
            client
                .skip(t.comparison_id)
                .with_context(|| format!("skipping comparison {}", t.comparison_id))?;
            stats.skips += 1;
            continue;
        };
        let mut rng = StdRng::seed_from_u64(judgment_seed(cfg.seed, index, t.comparison_id));
        let j = judge(&gold, cfg, &mut rng);
        let best = gold
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let picked_best = gold
            .iter()
            .zip(&j.ranking)
            .any(|(&g, &r)| r == 1 && g == best);
        let label = SubmitLabel {
            ranking: j.ranking,
            strength: j.strength,
            safety: None,
            edited_response: None,
            note: None,
            time_spent_ms: Some(started.elapsed().as_millis().max(1) as u64),
        };
        match client.submit_label(t.comparison_id, &label) {
            Ok(_) => {
                errors = 0;
                stats.labels += 1;
                stats.gold_winner += picked_best as usize;
            }
            Err(e) if !is_transport(&e) => {
                // the server refused this label (lease lost, comparison complete, ...):
                // give the task back so it is not offered to this bot again
                errors += 1;
                if errors >= MAX_ERRORS {
                    return Err(e.context(format!(
                        "the server at {server} refused {MAX_ERRORS} labels in a row"
                    )));
                }
                let _ = client.skip(t.comparison_id);
                stats.skips += 1;
            }
            Err(e) => {
                errors += 1;
                if errors >= MAX_ERRORS {
                    return Err(
                        e.context(format!("cannot reach the annotation server at {server}"))
                    );
                }
                std::thread::sleep(Duration::from_millis(100 * errors as u64));
            }
        }
    }
    Ok(stats)
}

/// Runs the bots until no task is left for any of them (or `stop` is set);
/// returns counts. Each bot runs on its own thread, so a comparison that wants
/// several labels gets them from distinct bots; `bots[i]` is bot `i` for
/// seeding. k-way comparisons get a full ranking: sort by gold reward
/// perturbed with Gumbel noise of scale = temperature (Plackett–Luce), so
/// 2-way reduces to the BT rule of [`SimConfig::temperature`]. A server that is
/// down or refuses the bots' tokens is an error naming the server.
pub fn label_until_done(
    server: &str,
    bots: &[(String, String)],
    task: &dyn Task,
    cfg: &SimConfig,
    stop: &AtomicBool,
) -> Result<SimStats> {
    cfg.validate()?;
    if bots.is_empty() {
        bail!("no bot accounts to label with");
    }
    let results: Vec<Result<BotStats>> = std::thread::scope(|s| {
        let handles: Vec<_> = bots
            .iter()
            .enumerate()
            .map(|(i, (name, token))| {
                s.spawn(move || bot_loop(server, i, name, token, task, cfg, stop))
            })
            .collect();
        handles
            .into_iter()
            .zip(bots)
            .map(|(h, (name, _))| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("bot {name} panicked")))
            })
            .collect()
    });
    let mut stats = SimStats::default();
    for (r, (name, _)) in results.into_iter().zip(bots) {
        let b = r.with_context(|| format!("simulated labeler {name}"))?;
        stats.labels += b.labels;
        stats.skips += b.skips;
        stats.gold_winner += b.gold_winner;
        stats.bots.push(b);
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------
// CLI

/// `rlhf label ...`: labeling tools.
#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LabelCommand,
}

/// The `rlhf label` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LabelCommand {
    /// Bot labelers that rank responses by a task's gold reward with Bradley–Terry noise, through the public API.
    Simulate(SimulateArgs),
}

/// `rlhf label simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The annotation server.
    #[arg(long, env = "RLHF_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An admin API token (to create the bot accounts `sim-bot-N` and their tokens).
    #[arg(long, env = "RLHF_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The task whose gold reward the bots judge by: review or arithmetic.
    #[arg(long, default_value = "review", value_parser = clap::builder::PossibleValuesParser::new(super::tasks::TASKS))]
    pub task: String,
    /// Number of bots (each labels on its own thread).
    #[arg(long, default_value_t = 3)]
    pub bots: usize,
    /// Bradley–Terry temperature: P(prefer a over b) = σ((gold_a − gold_b)/T); 0 = always the gold winner.
    #[arg(long, default_value_t = 0.5)]
    pub temperature: f32,
    /// Fraction of judgments in which a bot flips its choice, independently of the other bots.
    #[arg(long, default_value_t = 0.0)]
    pub disagreement: f32,
    /// Seed of the bots' noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gold-gap thresholds for significantly better, better, slightly better (3 numbers, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.6,0.3,0.1")]
    pub strength_thresholds: Vec<f32>,
    /// Keep polling for new tasks every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// `rlhf label ...`. `simulate` labels everything there is (with `--watch`,
/// keeps polling every second until Ctrl-C) and prints the counts as JSON.
pub fn run(a: LabelArgs) -> Result<()> {
    match a.command {
        LabelCommand::Simulate(s) => simulate(s),
    }
}

fn simulate(a: SimulateArgs) -> Result<()> {
    let thresholds: [f32; 3] = a.strength_thresholds.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!("--strength-thresholds takes 3 numbers (significantly,better,slightly)")
    })?;
    let cfg = SimConfig {
        bots: a.bots,
        temperature: a.temperature,
        disagreement: a.disagreement,
        seed: a.seed,
        strength_thresholds: thresholds,
    };
    cfg.validate()?;
    if a.bots == 0 {
        bail!("--bots must be at least 1");
    }
    let task = super::tasks::task(&a.task)?;
    let bots = ensure_bots(&a.server, &a.token, a.bots)?;
    if a.watch {
        let r = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current labels (Ctrl-C again to quit at once)");
        });
        if let Err(e) = r {
            eprintln!("warning: cannot install the Ctrl-C handler ({e})");
        }
        eprintln!(
            "{} bots labeling {} tasks at {}; Ctrl-C to stop",
            a.bots,
            task.name(),
            a.server
        );
    }
    let mut total = SimStats::default();
    loop {
        let s = label_until_done(&a.server, &bots, task.as_ref(), &cfg, &STOP)?;
        if s.labels + s.skips > 0 {
            eprintln!(
                "labeled {} (skipped {}); {} in total",
                s.labels,
                s.skips,
                total.labels + s.labels
            );
        }
        total.add(&s);
        if !a.watch || STOP.load(Ordering::SeqCst) {
            break;
        }
        for _ in 0..10 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("{}", serde_json::to_string_pretty(&total)?);
    Ok(())
}
