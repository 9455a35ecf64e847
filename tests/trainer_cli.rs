//! `rlhf sft|dpo|rs|ppo` end to end through the real binary on a tiny
//! checkpoint: outputs are loadable checkpoints, resume works, bad input
//! gives clear errors.
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

mod common;
use common::{err, rlhf, tiny_init};

/// Runs `rlhf ARGS`, which must succeed; its stderr (where the stages report).
fn ok<S: AsRef<str> + std::fmt::Debug>(args: &[S]) -> String {
    String::from_utf8_lossy(&common::run_ok(args).stderr).to_string()
}

fn write_jsonl(path: &Path, lines: &[Value]) -> String {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn metrics(out: &str) -> Vec<Value> {
    std::fs::read_to_string(format!("{out}.metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_stage_runs_resumes_and_writes_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let model = d("tiny");
    let mut shape = common::GQA_2_LAYERS.to_vec();
    shape.extend(["--vocab-size", "300", "--seed", "5"]);
    ok(&tiny_init(&model, &shape));
    let sft = write_jsonl(
        &tmp.path().join("sft.jsonl"),
        &[
            json!({"prompt": "Q: 2+2?", "completion": " A: 4"}),
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}),
            json!({"prompt": [{"role": "user", "content": "name?"}], "completion": [{"role": "assistant", "content": "rlhf"}]}),
            json!({"text": "plain text is trained on every token"}),
        ],
    );
    let common = [
        "--batch-size",
        "2",
        "--micro-batch",
        "1",
        "--log-every",
        "1",
        "--quiet",
    ];

    // SFT, interrupted after one step, then resumed; equal to an uninterrupted run
    let s_full = d("sft-full");
    ok(&[
        &[
            "sft",
            "--policy",
            &model,
            "--data",
            &sft,
            "--out",
            &s_full,
            "--max-steps",
            "3",
        ][..],
        &common,
    ]
    .concat());
    let s = d("sft");
    let e = ok(&[
        &[
            "sft",
            "--policy",
            &model,
            "--data",
            &sft,
            "--out",
            &s,
            "--max-steps",
            "3",
            "--stop-after",
            "1",
        ][..],
        &common,
    ]
    .concat());
    assert!(e.contains("--resume"), "{e}");
    let e = err(&[
        &[
            "sft",
            "--policy",
            &model,
            "--data",
            &sft,
            "--out",
            &s,
            "--max-steps",
            "3",
        ][..],
        &common,
    ]
    .concat());
    assert!(e.contains("already holds a training run"), "{e}");
    ok(&[
        &[
            "sft",
            "--policy",
            &model,
            "--data",
            &sft,
            "--out",
            &s,
            "--max-steps",
            "3",
            "--resume",
        ][..],
        &common,
    ]
    .concat());
    assert_eq!(
        std::fs::read(format!("{s}/model.safetensors")).unwrap(),
        std::fs::read(format!("{s_full}/model.safetensors")).unwrap()
    );
    assert_eq!(metrics(&s).len(), 3);
    let g = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "policy",
            "generate",
            "--model",
            &s,
            "--prompt",
            "Q: 2+2?",
            "--max-new-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(g.status.success());

    // DPO with TRL pairs (plain and conversational)
    let prefs = write_jsonl(
        &tmp.path().join("prefs.jsonl"),
        &[
            json!({"prompt": "Review:", "chosen": " great", "rejected": " awful"}),
            json!({"prompt": [{"role": "user", "content": "Say hi"}], "chosen": [{"role": "assistant", "content": "Hi!"}], "rejected": [{"role": "assistant", "content": "No."}]}),
            json!({"prompt": "Review:", "chosen": " lovely", "rejected": " dull"}),
        ],
    );
    let dpo = d("dpo");
    ok(&[
        &[
            "dpo",
            "--policy",
            &s,
            "--data",
            &prefs,
            "--out",
            &dpo,
            "--max-steps",
            "2",
            "--eval-fraction",
            "0",
            "--loss",
            "robust",
            "--label-smoothing",
            "0.1",
            "--rpo-alpha",
            "0.2",
        ][..],
        &common,
    ]
    .concat());
    let m = metrics(&dpo);
    assert!(
        m[0]["rewards/accuracies"].is_number() && m[0]["nll_loss"].is_number(),
        "{}",
        m[0]
    );
    // DPO exactly as a user runs it: every default, reference = the starting policy.
    // Each pair starts at Δ = 0, where −log σ(βΔ) still has slope −β/2: the
    // first step's gradient is not 0 (it was, with a softplus built from relu/abs).
    let dpo0 = d("dpo-defaults");
    ok(&[
        "dpo", "--policy", &s, "--data", &prefs, "--out", &dpo0, "--quiet",
    ]);
    let m = metrics(&dpo0);
    assert!(
        (m[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6,
        "{}",
        m[0]
    );
    assert!(m[0]["grad_norm"].as_f64().unwrap() > 1e-3, "{}", m[0]);

    // rejection sampling with a programmatic reward
    let prompts = write_jsonl(
        &tmp.path().join("prompts.jsonl"),
        &[
            json!({"prompt": "Tell me a story"}),
            json!({"prompt": [{"role": "user", "content": "Describe a cat"}], "tags": ["safety"]}),
        ],
    );
    let rs = d("rs");
    ok(&[
        &[
            "rs",
            "--policy",
            &s,
            "--prompts",
            &prompts,
            "--reward-fn",
            "count:e",
            "--k",
            "3",
            "--max-new-tokens",
            "5",
            "--keep-truncated",
            "--out",
            &rs,
            "--max-steps",
            "2",
        ][..],
        &common,
    ]
    .concat());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{rs}.rs_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["samples"]["count"], 6);
    assert_eq!(
        std::fs::read_to_string(format!("{rs}.best.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // PPO with a programmatic reward (value model from the policy)
    let ppo = d("ppo");
    ok(&[
        "ppo",
        "--policy",
        &s,
        "--prompts",
        &prompts,
        "--reward-fn",
        "count:e",
        "--max-new-tokens",
        "4",
        "--out",
        &ppo,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--ppo-epochs",
        "1",
        "--quiet",
    ]);
    assert!(Path::new(&ppo)
        .join("value_model")
        .join("config.json")
        .exists());
    let m = metrics(&ppo);
    assert_eq!(m.len(), 2);
    assert!(m[1]["objective/kl"].is_number());

    // SFT and PPO exactly as a user runs them: every default (PPO: TRL's
    // preset, reference = the starting policy, 64 episodes of 53 tokens)
    let sft0 = d("sft-defaults");
    ok(&[
        "sft", "--policy", &model, "--data", &sft, "--out", &sft0, "--quiet",
    ]);
    let m = metrics(&sft0);
    assert!(
        m[0]["loss"].as_f64().unwrap() > 0.0 && m[0]["grad_norm"].as_f64().unwrap() > 0.0,
        "{}",
        m[0]
    );
    let ppo0 = d("ppo-defaults");
    ok(&[
        "ppo",
        "--policy",
        &s,
        "--prompts",
        &prompts,
        "--reward-fn",
        "count:e",
        "--out",
        &ppo0,
        "--quiet",
    ]);
    let m = metrics(&ppo0);
    assert_eq!(m.len(), 1, "one iteration of 64 episodes over 2 prompts");
    // the first iteration samples from the reference itself: KL 0, ratio 1
    assert!(
        m[0]["objective/kl"].as_f64().unwrap().abs() < 1e-2,
        "{}",
        m[0]
    );
    assert!(m[0]["grad_norm"].as_f64().unwrap() > 0.0, "{}", m[0]);
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let model = d("tiny");
    ok(&tiny_init(&model, &[]));
    let bad = d("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops\n").unwrap();
    let e = err(&["sft", "--policy", &model, "--data", &bad, "--out", &d("o1")]);
    assert!(e.contains("line 2") && e.contains("not valid JSON"), "{e}");
    let wrong = write_jsonl(&tmp.path().join("wrong.jsonl"), &[json!({"input": "x"})]);
    let e = err(&[
        "sft",
        "--policy",
        &model,
        "--data",
        &wrong,
        "--out",
        &d("o2"),
    ]);
    assert!(
        e.contains("expected `text`, `messages`, or `prompt` + `completion`"),
        "{e}"
    );
    let prompts = write_jsonl(&tmp.path().join("p.jsonl"), &[json!({"prompt": "x"})]);
    let e = err(&[
        "ppo",
        "--policy",
        &model,
        "--prompts",
        &prompts,
        "--out",
        &d("o3"),
    ]);
    assert!(e.contains("give one reward"), "{e}");
    let e = err(&[
        "rs",
        "--policy",
        &model,
        "--prompts",
        &prompts,
        "--reward-fn",
        "length",
        "--out",
        &d("o4"),
    ]);
    assert!(e.contains("reward function"), "{e}");
    let e = err(&[
        "dpo",
        "--policy",
        &d("missing"),
        "--data",
        &prompts,
        "--out",
        &d("o5"),
    ]);
    assert!(
        e.contains("not a directory") || e.contains("missing"),
        "{e}"
    );
    let e = err(&[
        "dpo",
        "--policy",
        &model,
        "--data",
        &prompts,
        "--out",
        &d("o6"),
        "--beta",
        "0",
    ]);
    assert!(e.contains("chosen") || e.contains("beta"), "{e}");
}

#[test]
fn out_never_destroys_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let model = d("tiny");
    ok(&tiny_init(&model, &[]));
    let data = write_jsonl(
        &tmp.path().join("sft.jsonl"),
        &[json!({"prompt": "a", "completion": " b c d"})],
    );
    // a folder of the user's: every command refuses it, and it is left as it was
    let mine = d("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(format!("{mine}/thesis.tex"), "years of work").unwrap();
    let init = tiny_init(&mine, &[]);
    for args in [
        init.iter().map(String::as_str).collect(),
        vec!["policy", "convert", "--model", &model, "--out", &mine],
        vec![
            "sft", "--policy", &model, "--data", &data, "--out", &mine, "--quiet",
        ],
        vec![
            "sft", "--policy", &model, "--data", &data, "--out", &mine, "--quiet", "--resume",
        ],
        vec!["export", "--policy", &model, "--out", &mine],
    ] {
        let e = err(&args);
        assert!(
            e.contains("thesis.tex") && e.contains("--overwrite"),
            "{args:?}: {e}"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{mine}/thesis.tex")).unwrap(),
            "years of work"
        );
    }
    // a plain file is not turned into a directory
    let file = d("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let e = err(&[
        "sft", "--policy", &model, "--data", &data, "--out", &file, "--quiet",
    ]);
    assert!(e.contains("a file"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // the working folder is never replaced, even with --overwrite
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .current_dir(&mine)
        .args([
            "sft",
            "--policy",
            &model,
            "--data",
            &data,
            "--out",
            ".",
            "--quiet",
            "--overwrite",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("working folder"));
    assert!(Path::new(&mine).join("thesis.tex").exists());
    // an earlier run: --resume continues it, a plain rerun is refused, --overwrite replaces it
    let run = d("run");
    ok(&[
        "sft",
        "--policy",
        &model,
        "--data",
        &data,
        "--out",
        &run,
        "--max-steps",
        "1",
        "--quiet",
    ]);
    assert!(err(&[
        "sft",
        "--policy",
        &model,
        "--data",
        &data,
        "--out",
        &run,
        "--max-steps",
        "1",
        "--quiet"
    ])
    .contains("--overwrite"));
    ok(&[
        "sft",
        "--policy",
        &model,
        "--data",
        &data,
        "--out",
        &run,
        "--max-steps",
        "2",
        "--quiet",
        "--overwrite",
    ]);
    // --overwrite replaces the user's folder when asked to
    ok(&tiny_init(&mine, &["--overwrite"]));
    assert!(!Path::new(&mine).join("thesis.tex").exists());
    assert!(Path::new(&mine).join("config.json").exists());
}

#[test]
fn ctrl_c_stops_at_a_step_boundary_with_a_resumable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let model = d("tiny");
    ok(&tiny_init(&model, &[]));
    let data = write_jsonl(
        &tmp.path().join("sft.jsonl"),
        &[
            json!({"prompt": "a", "completion": " b c d"}),
            json!({"prompt": "e", "completion": " f g"}),
        ],
    );
    let out = d("run");
    let child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "sft",
            "--policy",
            &model,
            "--data",
            &data,
            "--out",
            &out,
            "--max-steps",
            "1000000",
            "--batch-size",
            "2",
            "--log-every",
            "1",
            "--quiet",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = format!("{out}.metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(t0.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    // an interrupted run is not a success: exit 130, as a shell reports SIGINT
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("continue with --resume"), "{e}");
    // the checkpoint is marked unfinished: generate warns, export refuses
    let g = rlhf(&[
        "policy",
        "generate",
        "--model",
        &out,
        "--prompt",
        "a",
        "--max-new-tokens",
        "2",
    ]);
    assert!(g.status.success() && String::from_utf8_lossy(&g.stderr).contains("unfinished"));
    let x = err(&["export", "--policy", &out, "--out", &d("exported")]);
    assert!(x.contains("unfinished"), "{x}");
    assert!(std::fs::read_to_string(&metrics).unwrap().lines().count() >= 3);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{out}/trainer_state/state.json")).unwrap(),
    )
    .unwrap();
    let step = state["progress"]["step"].as_u64().unwrap();
    assert!(step >= 3, "checkpoint at step {step}");
    // it resumes from there
    let e = ok(&[
        "sft",
        "--policy",
        &model,
        "--data",
        &data,
        "--out",
        &out,
        "--max-steps",
        "1000000",
        "--batch-size",
        "2",
        "--log-every",
        "1",
        "--quiet",
        "--resume",
        "--stop-after",
        &(step + 2).to_string(),
    ]);
    assert!(
        e.contains(&format!("stopped after step {}", step + 2)),
        "{e}"
    );
}
