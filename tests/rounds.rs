//! Alignment rounds end to end through the real binary: `rlhf demo` runs
//! rounds of each recipe with simulated labelers against a real server on a
//! temporary SQLite file; a worker killed in the middle of a round is
//! restarted and finishes it without duplicating comparisons or losing
//! labels; the exported model loads and generates.
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{ok, spawn, wait_until, KillOnDrop};

fn demo(out: &Path, recipe: &str) -> Value {
    let o = out.to_str().unwrap();
    // noiseless bots: which bot labels which comparison depends on timing, so
    // with Bradley-Terry noise the labels (and the outcome) would vary run to run
    let table = ok(&[
        "demo",
        "--out",
        o,
        "--recipe",
        recipe,
        "--rounds",
        "1",
        "--quiet",
        "--bot-temperature",
        "0",
    ]);
    assert!(table.contains("| 1 |"), "{table}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    r
}

fn gold(report: &Value, i: usize) -> f64 {
    report["rounds"][i]["gold_reward"].as_f64().unwrap()
}

fn check_recipe(recipe: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let r = demo(&out, recipe);
    let (before, after) = (gold(&r, 0), gold(&r, 1));
    eprintln!(
        "{recipe}: gold reward {before:.3} -> {after:.3}; {}",
        r["rounds"][1]
    );
    assert!(after > before, "{recipe}: gold reward {before} -> {after}");
    let round = &r["rounds"][1];
    assert!(
        round["rm_accuracy"].as_f64().unwrap() > 0.5,
        "reward model trained: {round}"
    );
    assert!(round["kl_to_initial"].is_number());
    let output = round["output"].as_str().unwrap();
    assert!(Path::new(output).join("model.safetensors").exists());
    // the round's reward model and its plots
    let workdir = out
        .join("rounds")
        .join(format!("round-{}", round["round_id"]));
    assert!(
        workdir.join("rm").join("eval_report.json").exists(),
        "{}",
        workdir.display()
    );
    assert!(
        workdir
            .join("plots")
            .join("summary-gold_reward.svg")
            .exists(),
        "{}",
        workdir.display()
    );
}

#[test]
fn demo_round_with_dpo_raises_the_gold_reward() {
    check_recipe("dpo");
}

#[test]
fn demo_round_with_rejection_sampling_raises_the_gold_reward() {
    check_recipe("rs");
}

#[test]
fn demo_round_with_ppo_raises_the_gold_reward() {
    check_recipe("ppo");
}

#[test]
fn demo_round_with_rs_then_ppo_raises_the_gold_reward() {
    check_recipe("rs+ppo");
}

#[test]
fn demo_round_with_rs_then_dpo_raises_the_gold_reward() {
    check_recipe("rs+dpo");
}

/// Two simulated labelers of the review task that label whatever appears.
fn spawn_bots(url: &str, token: &str, dir: &Path) -> KillOnDrop {
    KillOnDrop(spawn(
        &[
            "label", "simulate", "--server", url, "--token", token, "--task", "review", "--bots",
            "2", "--watch",
        ],
        &[],
        &dir.join("bots.log"),
    ))
}

/// A server with an admin token, stopped when dropped.
struct TestServer {
    _child: KillOnDrop,
    url: String,
    token: String,
}

fn start_server(dir: &Path) -> TestServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let child = KillOnDrop(spawn(
        &["serve", "--bind", &bind, "--database-url", &db],
        &[("RLHF_ADMIN_PASSWORD", "pw-for-tests-123")],
        &dir.join("server.log"),
    ));
    // ready when it answers: the port is bound before the database is set up
    let health = format!("http://{bind}/healthz");
    wait_until("the server", 60, || {
        Command::new("curl")
            .args(["-s", "-f", "-o", "/dev/null", &health])
            .status()
            .is_ok_and(|s| s.success())
    });
    let token = ok(&[
        "token",
        "create",
        "--username",
        "admin",
        "--database-url",
        &db,
    ])
    .trim()
    .to_string();
    TestServer {
        _child: child,
        url: format!("http://{bind}"),
        token,
    }
}

fn curl(s: &TestServer, args: &[&str]) -> Value {
    let o = Command::new("curl")
        .args([
            "-s",
            "-f",
            "-H",
            &format!("Authorization: Bearer {}", s.token),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

impl TestServer {
    /// The environment that points `rlhf` commands at this server.
    fn client_env(&self) -> [(&str, &str); 2] {
        [("RLHF_SERVER", &self.url), ("RLHF_TOKEN", &self.token)]
    }
}

/// A server, a tiny policy at `DIR/policy` and two bots labeling what appears.
fn server_policy_and_bots(dir: &Path) -> (TestServer, String, KillOnDrop) {
    let s = start_server(dir);
    let policy = dir.join("policy").to_str().unwrap().to_string();
    tiny_policy(&policy);
    let bots = spawn_bots(&s.url, &s.token, dir);
    (s, policy, bots)
}

/// A tiny random policy (GQA, 2 layers) at `out`.
fn tiny_policy(out: &str) {
    let mut extra = common::GQA_2_LAYERS.to_vec();
    extra.extend(["--vocab-size", "300"]);
    ok(&common::tiny_init(out, &extra));
}

#[test]
fn rounds_queued_without_paths_get_the_workers_defaults_and_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (s, policy, bots) = server_policy_and_bots(dir);
    let env = s.client_env();
    let workdir = dir.join("rounds");
    let mut ids = vec![];
    for i in 1..=2 {
        // what the dashboard's form sends: no policy, prompt source or work directory
        let body = format!(
            r#"{{"name": "dash-{i}", "status": "queued", "config": {{"recipe": "dpo", "task": "review", "prompts_per_round": 6, "k": 2, "labels_wanted": 1, "max_new_tokens": 8, "eval_prompts": 8}}}}"#
        );
        let r = curl(
            &s,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
                &format!("{}/api/rounds", s.url),
            ],
        );
        let id = r["id"].as_i64().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args([
                "worker",
                "--once",
                "--quiet",
                "--policy",
                &policy,
                "--workdir",
                workdir.to_str().unwrap(),
            ])
            .envs(env)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "worker: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r = curl(&s, &[&format!("{}/api/rounds/{id}", s.url)]);
        assert_eq!(r["status"], "done", "{r}");
        assert_eq!(r["state"]["config"]["prompt_source"], "task-review", "{r}");
        assert_eq!(r["state"]["config"]["index"], i, "{r}");
        let round_dir = workdir.join(format!("round-{id}"));
        assert_eq!(r["state"]["config"]["workdir"], round_dir.to_str().unwrap());
        assert!(round_dir
            .join("plots")
            .join("summary-gold_reward.svg")
            .exists());
        ids.push(r);
    }
    drop(bots);
    // the first starts from the worker's --policy, the second from the first's output
    assert_eq!(ids[0]["state"]["config"]["policy"], policy.as_str());
    assert_eq!(
        ids[1]["state"]["config"]["policy"],
        ids[0]["state"]["output"]
    );
    assert_eq!(ids[1]["state"]["config"]["initial_policy"], policy.as_str());
    // the task's prompts were imported once
    let prompts = curl(&s, &[&format!("{}/api/prompts?limit=500", s.url)]);
    assert!(prompts.as_array().unwrap().len() >= 12, "{prompts}");
    // the export of the second round knows its series from what the worker completed
    let exported = dir.join("export");
    let e = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "export",
            "--round",
            &ids[1]["id"].to_string(),
            "--out",
            exported.to_str().unwrap(),
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let card = std::fs::read_to_string(exported.join("README.md")).unwrap();
    assert!(
        card.contains(&format!("Base model: `{policy}`")) && card.contains("Rounds: 2"),
        "{card}"
    );
}

#[test]
fn a_killed_worker_restarts_and_finishes_the_round_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let srv = start_server(dir);
    let (url, token) = (srv.url.clone(), srv.token.clone());
    // a policy and prompts of the review task
    let policy = d("policy");
    tiny_policy(&policy);
    let prompts: String = (0..12)
        .map(|i| format!("{{\"prompt\": \"Review of film {i}:\", \"source\": \"fault\"}}\n"))
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let client_env = [
        ("RLHF_SERVER", url.as_str()),
        ("RLHF_TOKEN", token.as_str()),
    ];
    let import = Command::new("curl")
        .args([
            "-s",
            "-f",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            &format!("@{}", d("prompts.jsonl")),
            &format!("{url}/api/prompts/import"),
        ])
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let start = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "round",
            "start",
            "--recipe",
            "dpo",
            "--policy",
            &policy,
            "--prompt-source",
            "fault",
            "--text-prompts",
            "--task",
            "review",
            "--workdir",
            &d("rounds"),
            "--prompts-per-round",
            "12",
            "--k",
            "2",
            "--labels-wanted",
            "2",
            "--max-new-tokens",
            "8",
            "--rm-lr",
            "1e-3",
            "--policy-lr",
            "1e-3",
            "--policy-steps",
            "200",
        ])
        .envs(client_env)
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let round: Value = serde_json::from_str(&String::from_utf8_lossy(&start.stdout)).unwrap();
    let id = round["id"].as_i64().unwrap().to_string();
    let status = || -> Value {
        serde_json::from_str(&String::from_utf8_lossy(
            &Command::new(env!("CARGO_BIN_EXE_rlhf"))
                .args(["round", "status", &id])
                .envs(client_env)
                .output()
                .unwrap()
                .stdout,
        ))
        .unwrap()
    };
    // bots label whatever appears
    let bots = spawn_bots(&url, &token, dir);
    // the worker: killed once it is training the policy (labels in, reward model done)
    let worker_args = [
        "worker",
        "--once",
        "--name",
        "w1",
        "--lease-seconds",
        "5",
        "--quiet",
    ];
    let mut w = spawn(&worker_args, &client_env, &dir.join("worker1.log"));
    wait_until("the policy step", 300, || {
        status()["metrics"]["progress"]["step"] == "policy"
    });
    std::thread::sleep(Duration::from_millis(500));
    w.kill().unwrap();
    w.wait().unwrap();
    assert_eq!(status()["status"], "running");
    // restarted (same name: it continues its own round)
    let mut w2 = spawn(&worker_args, &client_env, &dir.join("worker2.log"));
    wait_until("the round to finish", 600, || status()["status"] == "done");
    assert!(
        w2.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(dir.join("worker2.log")).unwrap()
    );
    drop(bots);
    // one batch with exactly 12 comparisons, each with 2 labels
    let batches = Command::new("curl")
        .args([
            "-s",
            "-f",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{url}/api/batches"),
        ])
        .output()
        .unwrap();
    let b: Value = serde_json::from_slice(&batches.stdout).unwrap();
    let mine: Vec<&Value> = b
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["round_id"].as_i64().map(|r| r.to_string()) == Some(id.clone()))
        .collect();
    assert_eq!(mine.len(), 1, "{b}");
    assert_eq!(mine[0]["comparisons"], 12);
    assert_eq!(mine[0]["labels"], 24);
    // export the round's model and generate with it
    let exported = d("export");
    let e = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["export", "--round", &id, "--out", &exported])
        .envs(client_env)
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let card = std::fs::read_to_string(Path::new(&exported).join("README.md")).unwrap();
    assert!(
        card.contains("12 comparisons") && card.contains("24 labels"),
        "{card}"
    );
    ok(&[
        "policy",
        "generate",
        "--model",
        &exported,
        "--prompt",
        "Review of film 3:",
        "--max-new-tokens",
        "5",
    ]);
}

#[test]
fn cancelling_a_round_stops_its_worker_in_the_middle_of_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (s, policy, _bots) = server_policy_and_bots(dir);
    let env = s.client_env();
    // a DPO stage far longer than this test may run
    let body = r#"{"name": "long", "status": "queued", "config": {"recipe": "dpo", "task": "review", "prompts_per_round": 6, "k": 2, "labels_wanted": 1, "max_new_tokens": 8, "eval_prompts": 8, "dpo": {"steps": 1000000}}}"#;
    let r = curl(
        &s,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("{}/api/rounds", s.url),
        ],
    );
    let id = r["id"].as_i64().unwrap().to_string();
    let workdir = dir.join("rounds");
    let log = dir.join("worker.log");
    let mut w = KillOnDrop(spawn(
        &[
            "worker",
            "--once",
            "--quiet",
            "--lease-seconds",
            "3",
            "--policy",
            &policy,
            "--workdir",
            workdir.to_str().unwrap(),
        ],
        &env,
        &log,
    ));
    let stage = workdir.join(format!("round-{id}")).join("dpo");
    let metrics = workdir
        .join(format!("round-{id}"))
        .join("dpo.metrics.jsonl");
    wait_until("DPO training", 300, || {
        std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2)
    });
    let cancel = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["round", "cancel", &id, "--reason", "wrong data"])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    // the worker learns it at its next heartbeat and stops the stage there,
    // with a checkpoint; it does not train on to the end
    wait_until("the worker to stop", 300, || {
        w.0.try_wait().unwrap().is_some()
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(w.0.wait().unwrap().success(), "{text}");
    assert!(
        text.contains("lease lost") && text.contains("cancelled"),
        "{text}"
    );
    let (step, total) =
        policy::train_state::steps(&stage).expect("a checkpoint of the stopped stage");
    assert!(step < total, "{step} of {total}");
    eprintln!("stopped at step {step} of {total}:\n{text}");
    let r = curl(&s, &[&format!("{}/api/rounds/{id}", s.url)]);
    assert_eq!(r["status"], "cancelled", "{r}");
}
