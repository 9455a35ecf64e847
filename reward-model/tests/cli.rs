//! `rlhf rm train|eval|score` end to end (in-process, through the same clap
//! definitions the binary uses) on a tiny policy made by `rlhf policy init`
//! and a synthetic TRL-format preference file with a hidden rule.
use clap::Parser;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Parser)]
struct Policy {
    #[command(flatten)]
    a: policy::cli::PolicyArgs,
}

#[derive(Parser)]
struct Rm {
    #[command(flatten)]
    a: reward_model::cli::RmArgs,
}

fn rm(args: &[&str]) -> anyhow::Result<()> {
    let a = Rm::try_parse_from(std::iter::once("rm").chain(args.iter().copied()))?;
    reward_model::cli::run(a.a)
}

fn err(args: &[&str]) -> String {
    format!("{:#}", rm(args).expect_err("command should fail"))
}

const WORDS: &[&str] = &[
    "river", "stone", "music", "garden", "window", "yellow", "quiet", "paper", "morning", "bread",
    "light", "story",
];

/// TRL lines: the chosen response ends politely ("thank you"), the rejected
/// one does not; plain-text and conversational lines mixed, with strengths.
fn write_data(path: &Path, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lines = vec![];
    for i in 0..n {
        let mut words = |k: usize| {
            (0..k)
                .map(|_| *WORDS.choose(&mut rng).unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let prompt = format!("Tell me about the {}.", words(2));
        let good = format!(" The {} is {}, thank you.", words(1), words(3));
        let bad = format!(" The {} is {}.", words(1), words(3));
        let strength = [
            "better",
            "significantly_better",
            "slightly_better",
            "negligibly_better",
        ][i % 4];
        let line = if rng.gen_bool(0.5) {
            json!({"prompt": prompt, "chosen": good, "rejected": bad, "strength": strength})
        } else {
            json!({"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": good.trim()}],
                   "rejected": [{"role": "assistant", "content": bad.trim()}], "margin": 1.0})
        };
        lines.push(line.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn train_eval_score_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = |s: &str| dir.path().join(s).to_string_lossy().to_string();
    let p = Policy::try_parse_from([
        "policy",
        "init",
        "--out",
        &d("policy"),
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
        "--layers",
        "2",
        "--heads",
        "4",
        "--kv-heads",
        "2",
    ])
    .unwrap();
    policy::cli::run(p.a).unwrap();
    write_data(&dir.path().join("train.jsonl"), 300, 1);
    write_data(&dir.path().join("test.jsonl"), 100, 2);

    let train_args = [
        "train",
        "--init",
        &d("policy"),
        "--data",
        &d("train.jsonl"),
        "--out",
        &d("rm"),
        "--lr",
        "3e-3",
        "--batch-size",
        "16",
        "--micro-batch",
        "8",
        "--max-steps",
        "40",
        "--eval-fraction",
        "0.1",
        "--log-every",
        "10",
        "--quiet",
        "--margins",
        "off",
    ];
    rm(&train_args).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rm/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert!(dir.path().join("rm/tokenizer.json").exists());
    assert!(dir.path().join("rm/reward_normalization.json").exists());
    assert!(dir.path().join("rm.metrics.jsonl").exists());

    // a second run into the same directory needs --resume
    assert!(err(&train_args).contains("pass --resume"));

    rm(&[
        "eval",
        "--model",
        &d("rm"),
        "--data",
        &d("test.jsonl"),
        "--output",
        &d("report.json"),
    ])
    .unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    eprintln!("test accuracy {}", report["accuracy"]);
    assert_eq!(report["pairs"], 100);
    assert!(report["accuracy"].as_f64().unwrap() >= 0.8, "{report}");
    assert!(report["by_strength"]["better"]["count"].as_u64().unwrap() > 0);
    assert_eq!(report["calibration"].as_array().unwrap().len(), 5);

    // score: polite answers get higher rewards
    let input = [
        json!({"id": 1, "prompt": "Tell me about the river.", "response": " The stone is quiet, thank you."}),
        json!({"id": 2, "prompt": "Tell me about the river.", "response": " The stone is quiet."}),
        json!({"id": 3, "messages": [{"role": "user", "content": "Tell me about the paper."}, {"role": "assistant", "content": "The light is yellow, thank you."}]}),
        json!({"id": 4, "messages": [{"role": "user", "content": "Tell me about the paper."}, {"role": "assistant", "content": "The light is yellow."}]}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    rm(&[
        "score",
        "--model",
        &d("rm"),
        "--input",
        &d("in.jsonl"),
        "--output",
        &d("out.jsonl"),
    ])
    .unwrap();
    let out: Vec<Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 4);
    assert_eq!(out[2]["id"], 3);
    let r = |i: usize| out[i]["reward"].as_f64().unwrap();
    assert!(r(0) > r(1) && r(2) > r(3), "{out:?}");

    // safety + helpfulness (the same model twice here): line 2's prompt is tagged unsafe
    let tagged = [
        json!({"prompt": "Tell me about the river.", "response": " The stone is quiet, thank you."}),
        json!({"prompt": "Tell me about the river.", "response": " The stone is quiet.", "tags": ["unsafe"]}),
        json!({"prompt": "Tell me about the paper.", "response": " The light is yellow."}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(dir.path().join("tagged.jsonl"), tagged).unwrap();
    rm(&[
        "score",
        "--model",
        &d("rm"),
        "--safety-model",
        &d("rm"),
        "--input",
        &d("tagged.jsonl"),
        "--output",
        &d("combined.jsonl"),
    ])
    .unwrap();
    let c: Vec<Value> = std::fs::read_to_string(dir.path().join("combined.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(c[1]["source"], "safety");
    let mean: f64 = c.iter().map(|v| v["reward"].as_f64().unwrap()).sum::<f64>() / 3.0;
    assert!(mean.abs() < 1e-5, "{c:?}");
    for v in &c {
        let want = if v["source"] == "safety" {
            &v["safety"]
        } else {
            &v["helpfulness"]
        };
        assert!(want.is_number());
    }
    assert!(err(&[
        "score",
        "--model",
        &d("rm"),
        "--safety-model",
        &d("rm"),
        "--safety-threshold",
        "2",
        "--input",
        &d("tagged.jsonl"),
        "--output",
        &d("c2.jsonl")
    ])
    .contains("threshold"));

    // interrupted + resumed through the CLI equals the uninterrupted run
    let mut stop = train_args.to_vec();
    let out2 = d("rm2");
    assert_eq!(stop[5], "--out");
    stop[6] = &out2;
    let mut first = stop.clone();
    first.extend(["--stop-after", "15"]);
    rm(&first).unwrap();
    // a changed hyper-parameter is refused by name
    let mut changed = stop.clone();
    let lr_at = changed.iter().position(|&x| x == "--lr").unwrap();
    changed[lr_at + 1] = "1e-2";
    changed.push("--resume");
    let e = err(&changed);
    assert!(e.contains("lr") && e.contains("cannot resume"), "{e}");
    // `--resume` needs no --data: the saved run's sources are read again
    let data_at = stop.iter().position(|&x| x == "--data").unwrap();
    let mut resume = stop.clone();
    resume.drain(data_at..data_at + 2);
    resume.push("--resume");
    rm(&resume).unwrap();
    let a = policy::safetensors_io::read_dir_tensors(&dir.path().join("rm")).unwrap();
    let b = policy::safetensors_io::read_dir_tensors(&dir.path().join("rm2")).unwrap();
    assert_eq!(a, b, "resumed run differs");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = |s: &str| dir.path().join(s).to_string_lossy().to_string();
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"chosen\": \"a\", \"rejected\": \"b\"}\n{oops\n",
    )
    .unwrap();
    let e = err(&["train", "--data", &d("bad.jsonl"), "--out", &d("rm")]);
    assert!(e.contains("--init is required"), "{e}");
    let e = err(&[
        "train",
        "--data",
        &d("bad.jsonl"),
        "--out",
        &d("rm"),
        "--init",
        &d("nope"),
    ]);
    assert!(e.contains("nope"), "{e}");
    let e = err(&[
        "score",
        "--model",
        &d("nope"),
        "--input",
        &d("bad.jsonl"),
        "--output",
        &d("o.jsonl"),
    ]);
    assert!(e.contains("not a directory"), "{e}");
    let e = err(&[
        "train",
        "--data",
        &d("x.jsonl"),
        "--out",
        &d("rm"),
        "--margins",
        "1,2",
    ]);
    assert!(e.contains("four"), "{e}");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa");
    // a reward model without tokenizer files cannot read text
    let e = err(&[
        "eval",
        "--model",
        fixture.to_str().unwrap(),
        "--data",
        &d("bad.jsonl"),
    ]);
    assert!(e.contains("tokenizer"), "{e}");
}

/// A one-shot HTTP server standing in for the annotation server's export:
/// checks the request and answers with raw judgment rows.
#[test]
fn reads_judgments_from_the_annotation_server_over_http() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rows = [
        json!({"label_id": 1, "comparison_id": 10, "batch_id": 3, "round_id": null, "prompt_id": 5, "prompt": [{"role": "user", "content": "hi"}],
               "tags": [], "responses": [{"id": 1, "position": 0, "text": "go away"}, {"id": 2, "position": 1, "text": "hello!"}, {"id": 3, "position": 2, "text": "hey"}],
               "labeler_id": 2, "labeler": "ann", "ranking": [3, 1, 2], "strength": "better", "safety": null, "created_at": "2026-11-27T00:00:00Z"}),
        json!({"label_id": 2, "comparison_id": 10, "batch_id": 3, "round_id": null, "prompt_id": 5, "prompt": [{"role": "user", "content": "hi"}],
               "tags": [], "responses": [{"id": 1, "position": 0, "text": "go away"}, {"id": 2, "position": 1, "text": "hello!"}, {"id": 3, "position": 2, "text": "hey"}],
               "labeler_id": 3, "labeler": "bob", "ranking": [2, 1, 1], "strength": "slightly_better", "safety": null, "created_at": "2026-11-27T00:00:00Z"}),
    ];
    let body = rows
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut head = vec![];
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_string());
        }
        write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        head
    });
    let opts = reward_model::data::DataOptions::default();
    let q = annotation_server::api::ExportQuery {
        batch_id: Some(3),
        ..Default::default()
    };
    let pairs =
        reward_model::data::fetch_pairs(&format!("http://{addr}"), "tok", &q, &opts).unwrap();
    let head = server.join().unwrap();
    assert!(
        head[0].starts_with("GET /api/export?")
            && head[0].contains("format=raw")
            && head[0].contains("batch_id=3"),
        "{head:?}"
    );
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: Bearer tok")),
        "{head:?}"
    );
    // ann: hello > hey > go away (3 pairs, margin 2); bob: hello = hey > go away (2 pairs, margin 1)
    assert_eq!(pairs.len(), 5);
    assert_eq!(
        pairs
            .iter()
            .filter(|p| p.labeler.as_deref() == Some("ann") && p.margin == 2.0)
            .count(),
        3
    );
    assert_eq!(
        pairs
            .iter()
            .filter(|p| p.labeler.as_deref() == Some("bob") && p.margin == 1.0)
            .count(),
        2
    );
    assert!(pairs.iter().all(|p| p.group == "comparison:10"));
}
