//! Simulated labelers: the choice rule's statistics, and bots labeling through
//! a real annotation server (in-process, on a temporary SQLite file, real HTTP).
use annotation_server::api::client::Client;
use annotation_server::api::{
    CreateComparisons, ExportQuery, NewComparison, NewResponse, PromptImport, RawRow, Role,
    Strength,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use trainer::rounds::labelers::{
    ensure_bots, judge, label_until_done, preference_probability, strength_for_gap, LabelArgs,
    SimConfig,
};
use trainer::rounds::tasks::task;

// ---------------------------------------------------------------------------
// the choice rule

fn cfg(temperature: f32, disagreement: f32) -> SimConfig {
    SimConfig {
        bots: 3,
        temperature,
        disagreement,
        seed: 0,
        strength_thresholds: [0.6, 0.3, 0.1],
    }
}

#[test]
fn two_way_choices_follow_bradley_terry() {
    let mut rng = StdRng::seed_from_u64(1);
    let n = 40_000;
    for (gap, t) in [
        (0.5f32, 1.0f32),
        (1.0, 0.5),
        (0.2, 2.0),
        (-0.7, 0.3),
        (0.0, 1.0),
    ] {
        let c = cfg(t, 0.0);
        let wins = (0..n)
            .filter(|_| judge(&[0.3 + gap, 0.3], &c, &mut rng).ranking == vec![1, 2])
            .count();
        let p = wins as f64 / n as f64;
        let want = 1.0 / (1.0 + (-(gap / t) as f64).exp());
        assert!(
            (p - want).abs() < 0.01,
            "gap {gap} T {t}: {p} vs σ = {want}"
        );
        assert!((preference_probability(gap, t) as f64 - want).abs() < 1e-6);
    }
}

#[test]
fn k_way_rankings_follow_plackett_luce() {
    // P(response i ranked first) = softmax(gold / T)_i, and P(full order) is the PL product
    let gold = [0.9f32, 0.4, -0.2, 0.0];
    let t = 0.5f32;
    let c = cfg(t, 0.0);
    let mut rng = StdRng::seed_from_u64(2);
    let n = 40_000;
    let mut first = [0usize; 4];
    let mut order_0123 = 0usize;
    for _ in 0..n {
        let j = judge(&gold, &c, &mut rng);
        let mut sorted = j.ranking.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3, 4], "a strict ranking");
        first[j.ranking.iter().position(|&r| r == 1).unwrap()] += 1;
        order_0123 += (j.ranking == vec![1, 2, 4, 3]) as usize;
    }
    let w: Vec<f64> = gold.iter().map(|&g| (g as f64 / t as f64).exp()).collect();
    let z: f64 = w.iter().sum();
    for i in 0..4 {
        let p = first[i] as f64 / n as f64;
        assert!(
            (p - w[i] / z).abs() < 0.01,
            "first place {i}: {p} vs {}",
            w[i] / z
        );
    }
    // order 0 > 1 > 3 > 2
    let pl = w[0] / z * w[1] / (w[1] + w[2] + w[3]) * w[3] / (w[2] + w[3]);
    let p = order_0123 as f64 / n as f64;
    assert!((p - pl).abs() < 0.01, "{p} vs {pl}");
}

#[test]
fn temperature_zero_picks_the_gold_order_and_ties_share_a_rank() {
    let mut rng = StdRng::seed_from_u64(3);
    let c = cfg(0.0, 0.0);
    for _ in 0..100 {
        assert_eq!(
            judge(&[0.1, 0.9, -0.5], &c, &mut rng).ranking,
            vec![2, 1, 3]
        );
    }
    let j = judge(&[0.0, 1.0, 0.0, 1.0], &c, &mut rng);
    assert_eq!(j.ranking, vec![3, 1, 3, 1]);
    assert_eq!(j.strength, Strength::SignificantlyBetter);
    let j = judge(&[0.5, 0.5], &c, &mut rng);
    assert_eq!(j.ranking, vec![1, 1]);
    assert_eq!(j.strength, Strength::NegligiblyBetter);
    // NaN counts as the worst; empty and single inputs do not panic
    assert_eq!(judge(&[f32::NAN, -3.0], &c, &mut rng).ranking, vec![2, 1]);
    assert!(judge(&[], &c, &mut rng).ranking.is_empty());
    assert_eq!(judge(&[1.0], &c, &mut rng).ranking, vec![1]);
    let hot = cfg(f32::INFINITY, 2.0);
    assert_eq!(judge(&[1.0, 0.0], &hot, &mut rng).ranking.len(), 2);
}

#[test]
fn disagreement_flips_that_fraction_of_choices() {
    let mut rng = StdRng::seed_from_u64(4);
    let c = cfg(0.0, 0.3);
    let n = 20_000;
    let flipped = (0..n)
        .filter(|_| judge(&[1.0, 0.0, -1.0], &c, &mut rng).ranking == vec![2, 1, 3])
        .count();
    let p = flipped as f64 / n as f64;
    assert!((p - 0.3).abs() < 0.015, "{p}");
    // a flipped choice is "negligibly better" (the bot chose the worse one)
    let j = (0..100)
        .map(|_| judge(&[1.0, 0.0], &c, &mut rng))
        .find(|j| j.ranking == vec![2, 1])
        .unwrap();
    assert_eq!(j.strength, Strength::NegligiblyBetter);
}

#[test]
fn strength_follows_the_gold_gap() {
    let t = [0.6, 0.3, 0.1];
    assert_eq!(strength_for_gap(1.5, t), Strength::SignificantlyBetter);
    assert_eq!(strength_for_gap(0.6, t), Strength::SignificantlyBetter);
    assert_eq!(strength_for_gap(0.45, t), Strength::Better);
    assert_eq!(strength_for_gap(0.2, t), Strength::SlightlyBetter);
    assert_eq!(strength_for_gap(0.05, t), Strength::NegligiblyBetter);
    assert_eq!(strength_for_gap(-1.0, t), Strength::NegligiblyBetter);
    assert_eq!(strength_for_gap(f32::NAN, t), Strength::NegligiblyBetter);
}

#[test]
fn bad_configurations_are_errors() {
    for c in [
        cfg(-1.0, 0.0),
        cfg(f32::NAN, 0.0),
        cfg(0.5, 1.5),
        cfg(0.5, -0.1),
        SimConfig {
            strength_thresholds: [0.1, 0.3, 0.6],
            ..cfg(0.5, 0.0)
        },
    ] {
        assert!(c.validate().is_err(), "{c:?}");
        let stop = AtomicBool::new(false);
        let bots = vec![("sim-bot-0".to_string(), "x".to_string())];
        assert!(label_until_done(
            "http://127.0.0.1:9",
            &bots,
            task("review").unwrap().as_ref(),
            &c,
            &stop
        )
        .is_err());
    }
    assert!(SimConfig::default().validate().is_ok());
}

// ---------------------------------------------------------------------------
// against a real server

/// An annotation server on a temporary SQLite file, running on its own tokio runtime.
struct Server {
    url: String,
    admin: String,
    _server: annotation_server::server::RunningServer,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start_server() -> Server {
    use annotation_server::{accounts, db, server::RunningServer, state};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sim.sqlite").display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, admin) = rt.block_on(async {
        let conn = db::connect_and_migrate(&url).await.expect("migrate");
        accounts::create_user(&conn, "admin", "password123", Role::Admin, None)
            .await
            .unwrap();
        let admin = accounts::create_token(&conn, "admin", None, None)
            .await
            .unwrap();
        let st = state::AppState::new(conn, state::Config::default());
        (
            RunningServer::start(st, "127.0.0.1:0").await.expect("bind"),
            admin,
        )
    });
    Server {
        url: server.url(),
        admin,
        _server: server,
        _rt: rt,
        _dir: dir,
    }
}

/// Imports one prompt per response set and creates a batch of comparisons; returns the batch id.
fn create_batch(
    s: &Server,
    name: &str,
    prompt: &str,
    sets: &[Vec<&str>],
    labels_wanted: u32,
) -> (i64, Vec<i64>) {
    let c = Client::new(&s.url, &s.admin).unwrap();
    let imports: Vec<PromptImport> = (0..sets.len())
        .map(|i| PromptImport {
            id: Some(format!("{name}-{i}")),
            prompt: Some(prompt.to_string()),
            ..Default::default()
        })
        .collect();
    let ids = c.import_prompts(&imports).unwrap().prompt_ids;
    let comparisons = sets
        .iter()
        .zip(&ids)
        .map(|(set, &id)| NewComparison {
            prompt_id: Some(id),
            responses: set
                .iter()
                .map(|t| NewResponse {
                    text: t.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let created = c
        .create_comparisons(&CreateComparisons {
            batch: name.into(),
            labels_wanted: Some(labels_wanted),
            comparisons,
            ..Default::default()
        })
        .unwrap();
    (created.batch_id, created.comparison_ids)
}

fn raw(s: &Server, batch_id: i64) -> BTreeMap<i64, Vec<RawRow>> {
    let c = Client::new(&s.url, &s.admin).unwrap();
    let mut by: BTreeMap<i64, Vec<RawRow>> = BTreeMap::new();
    for r in c
        .export_raw(ExportQuery {
            batch_id: Some(batch_id),
            ..Default::default()
        })
        .unwrap()
    {
        by.entry(r.comparison_id).or_default().push(r);
    }
    by
}

// gold rewards of the review task (see tests/tasks.rs)
const A: &str = " the plot is great and i loved it and a fun movie."; // 0.75
const B: &str = " a great movie."; // 0.5
const C: &str = " the movie was long."; // 0
const D: &str = " it was awful and boring."; // -0.667
const E: &str = " it was bad and i hated it and the plot is dull."; // -0.75

#[test]
fn bots_label_every_comparison_with_the_gold_winner_at_temperature_zero() {
    let s = start_server();
    let t = task("review").unwrap();
    let sets = vec![
        vec![A, D],
        vec![D, A],
        vec![B, A],
        vec![C, B],
        vec![E, D],
        vec![A, B, C],
        vec![D, C, E, A],
        vec![C, "\u{1F600} 非常 great ✨"],
    ];
    let (batch, ids) = create_batch(&s, "t0", "Review of the movie:", &sets, 2);
    let bots = ensure_bots(&s.url, &s.admin, 3).unwrap();
    assert_eq!(
        bots.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(),
        ["sim-bot-0", "sim-bot-1", "sim-bot-2"]
    );
    let c = SimConfig {
        temperature: 0.0,
        ..cfg(0.0, 0.0)
    };
    let stop = AtomicBool::new(false);
    let stats = label_until_done(&s.url, &bots, t.as_ref(), &c, &stop).unwrap();
    assert_eq!(stats.labels, 2 * sets.len(), "{stats:?}");
    assert_eq!(stats.gold_winner, stats.labels);
    assert_eq!(stats.skips, 0);
    assert_eq!(
        stats.bots.iter().map(|b| b.labels).sum::<usize>(),
        stats.labels
    );

    let rows = raw(&s, batch);
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), ids);
    let mut strengths = std::collections::BTreeSet::new();
    for (set, id) in sets.iter().zip(&ids) {
        let labels = &rows[id];
        assert_eq!(labels.len(), 2, "comparison {id}");
        assert_ne!(labels[0].labeler, labels[1].labeler, "distinct labelers");
        let gold: Vec<f32> = set
            .iter()
            .map(|r| t.gold("Review of the movie:", r))
            .collect();
        // the gold order; equal gold shares a rank (the last case: both score 0)
        let want: Vec<u32> = gold
            .iter()
            .map(|g| 1 + gold.iter().filter(|h| *h > g).count() as u32)
            .collect();
        let mut sorted = gold.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let gap = sorted[0] - sorted[1];
        let strength = if gap >= 0.6 {
            Strength::SignificantlyBetter
        } else if gap >= 0.3 {
            Strength::Better
        } else if gap >= 0.1 {
            Strength::SlightlyBetter
        } else {
            Strength::NegligiblyBetter
        };
        for l in labels {
            assert!(l.labeler.starts_with("sim-bot-"), "{}", l.labeler);
            assert_eq!(l.ranking, want, "comparison {id}: {set:?}");
            assert_eq!(l.strength, strength, "comparison {id}: gap {gap}");
            assert_eq!(l.safety, None);
            assert!(l.time_spent_ms.is_some_and(|ms| ms >= 1));
            strengths.insert(l.strength.as_str());
        }
    }
    assert!(
        strengths.len() >= 3,
        "the cases cover several strength levels: {strengths:?}"
    );

    // nothing left: a second run labels nothing; the accounts are reused
    let again = ensure_bots(&s.url, &s.admin, 3).unwrap();
    assert_eq!(
        again.iter().map(|b| &b.0).collect::<Vec<_>>(),
        bots.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    let stats = label_until_done(&s.url, &again, t.as_ref(), &c, &stop).unwrap();
    assert_eq!(stats.labels, 0);
    // a stop request before starting labels nothing either
    create_batch(&s, "stopped", "Review of the movie:", &[vec![A, B]], 1);
    let stats = label_until_done(&s.url, &again, t.as_ref(), &c, &AtomicBool::new(true)).unwrap();
    assert_eq!(stats.labels, 0);
}

#[test]
fn bots_disagree_at_a_high_temperature() {
    let s = start_server();
    let t = task("review").unwrap();
    let sets: Vec<Vec<&str>> = (0..30)
        .map(|i| if i % 2 == 0 { vec![A, D] } else { vec![D, A] })
        .collect();
    let (batch, ids) = create_batch(&s, "hot", "Review of the movie:", &sets, 3);
    let bots = ensure_bots(&s.url, &s.admin, 3).unwrap();
    let c = SimConfig {
        seed: 11,
        ..cfg(2.0, 0.0)
    };
    let stats = label_until_done(&s.url, &bots, t.as_ref(), &c, &AtomicBool::new(false)).unwrap();
    assert_eq!(stats.labels, 90);
    let rows = raw(&s, batch);
    let mut prefer_a = 0;
    let mut split = 0;
    for (set, id) in sets.iter().zip(&ids) {
        let labels = &rows[id];
        assert_eq!(labels.len(), 3);
        let a_pos = set.iter().position(|r| *r == A).unwrap();
        let votes = labels.iter().filter(|l| l.ranking[a_pos] == 1).count();
        prefer_a += votes;
        split += (votes != 0 && votes != 3) as usize;
    }
    // P(prefer A) = σ(1.417 / 2) ≈ 0.67: about 60 of 90
    assert!(
        (46..=76).contains(&prefer_a),
        "{prefer_a} of 90 prefer the gold winner"
    );
    assert!(split >= 5, "bots disagree on some comparisons: {split}");
    assert_eq!(stats.gold_winner, prefer_a);
}

#[test]
fn the_cli_labels_arithmetic_through_the_server() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Label(LabelArgs),
    }
    let s = start_server();
    let t = task("arithmetic").unwrap();
    let sets = vec![
        vec![" 19.", " 18."],
        vec![" 20.", " 19.", " 17."],
        vec![" 5.", " 6."],
    ];
    let (batch, ids) = create_batch(&s, "cli", "Q: 12+7=", &sets, 2);
    let cli = Cli::try_parse_from([
        "rlhf",
        "label",
        "simulate",
        "--server",
        &s.url,
        "--token",
        &s.admin,
        "--task",
        "arithmetic",
        "--bots",
        "2",
        "--temperature",
        "0",
        "--seed",
        "3",
        "--strength-thresholds",
        "0.9,0.5,0.2",
    ])
    .unwrap();
    let Cmd::Label(a) = cli.cmd;
    trainer::rounds::labelers::run(a).unwrap();
    let rows = raw(&s, batch);
    for (set, id) in sets.iter().zip(&ids) {
        for l in &rows[id] {
            for (pos, r) in set.iter().enumerate() {
                // the right answer first; wrong answers tie
                let want = if t.gold("Q: 12+7=", r) == 1.0 {
                    1
                } else if set.iter().any(|x| t.gold("Q: 12+7=", x) == 1.0) {
                    2
                } else {
                    1
                };
                assert_eq!(l.ranking[pos], want, "{set:?} {:?}", l.ranking);
            }
        }
        assert_eq!(rows[id].len(), 2);
    }
    // a bad option is a parse error, a bad value a clear error
    assert!(
        Cli::try_parse_from(["rlhf", "label", "simulate", "--token", "x", "--task", "poetry"])
            .is_err()
    );
    let cli = Cli::try_parse_from([
        "rlhf",
        "label",
        "simulate",
        "--server",
        &s.url,
        "--token",
        &s.admin,
        "--temperature=-1",
    ])
    .unwrap();
    let Cmd::Label(a) = cli.cmd;
    assert!(trainer::rounds::labelers::run(a)
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    let cli = Cli::try_parse_from([
        "rlhf",
        "label",
        "simulate",
        "--server",
        &s.url,
        "--token",
        &s.admin,
        "--strength-thresholds",
        "0.5,0.1",
    ])
    .unwrap();
    let Cmd::Label(a) = cli.cmd;
    assert!(trainer::rounds::labelers::run(a)
        .unwrap_err()
        .to_string()
        .contains("3 numbers"));
}

#[test]
fn unreachable_servers_and_wrong_tokens_are_clear_errors() {
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let e = format!("{:#}", ensure_bots(&url, "tok", 2).unwrap_err());
    assert!(
        e.contains("cannot reach the annotation server") && e.contains(&url),
        "{e}"
    );
    let bots = vec![("sim-bot-0".to_string(), "tok".to_string())];
    let e = format!(
        "{:#}",
        label_until_done(
            &url,
            &bots,
            task("review").unwrap().as_ref(),
            &cfg(0.0, 0.0),
            &AtomicBool::new(false)
        )
        .unwrap_err()
    );
    assert!(
        e.contains("cannot reach the annotation server")
            && e.contains(&url)
            && e.contains("sim-bot-0"),
        "{e}"
    );
    assert!(label_until_done(
        &url,
        &[],
        task("review").unwrap().as_ref(),
        &cfg(0.0, 0.0),
        &AtomicBool::new(false)
    )
    .is_err());

    let s = start_server();
    let e = format!("{:#}", ensure_bots(&s.url, "not-a-token", 1).unwrap_err());
    assert!(e.contains("admin token") && e.contains("401"), "{e}");
    // a labeler's token cannot create bots
    let bots = ensure_bots(&s.url, &s.admin, 1).unwrap();
    let e = format!("{:#}", ensure_bots(&s.url, &bots[0].1, 1).unwrap_err());
    assert!(e.contains("admin token") && e.contains("403"), "{e}");
    // bots with a bad token
    let bad = vec![("sim-bot-0".to_string(), "wrong".to_string())];
    let e = format!(
        "{:#}",
        label_until_done(
            &s.url,
            &bad,
            task("review").unwrap().as_ref(),
            &cfg(0.0, 0.0),
            &AtomicBool::new(false)
        )
        .unwrap_err()
    );
    assert!(e.contains("401") && e.contains(&s.url), "{e}");
}
