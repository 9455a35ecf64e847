//! Parity with Hugging Face transformers' `LlamaForSequenceClassification`
//! on tiny random reward models made by scripts/make_rm_fixtures.py
//! (committed under tests/fixtures), and the round trip of our own save
//! through transformers (scripts/check_rm_roundtrip.py, when the repo's
//! .venv exists).
use dfdx::prelude::*;
use policy::config::DType;
use policy::model::Batch;
use reward_model::model::{last_token_indices, Normalization, RewardModel};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn seqs(e: &Value) -> Vec<Vec<u32>> {
    e["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let m = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{what}: max err {m:e}");
    assert!(m <= TOL, "{what}: ours {ours:?} vs transformers {theirs:?}");
}

#[test]
fn scores_match_transformers_when_pad_is_distinct() {
    let dev = Cpu::default();
    let e = expected("gqa");
    let rm = RewardModel::load(&fixture("gqa"), &dev).unwrap();
    let s = seqs(&e);
    let single: Vec<f32> = e["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["score"].as_f64().unwrap() as f32)
        .collect();
    for (i, seq) in s.iter().enumerate() {
        assert_close(
            &rm.raw_scores(std::slice::from_ref(seq), 1).unwrap(),
            &single[i..i + 1],
            &format!("gqa single {i}"),
        );
    }
    // one right-padded batch: transformers' own output (pad never occurs in the rows)
    assert_close(
        &rm.raw_scores(&s, 8).unwrap(),
        &floats(&e["hf_pad_equality"]),
        "gqa batched (AutoModelForSequenceClassification)",
    );
    // batches of 2 with a different padding layout give the same scores
    assert_close(
        &rm.raw_scores(&s, 2).unwrap(),
        &floats(&e["batched"]),
        "gqa batched by 2",
    );
}

#[test]
fn pad_equal_to_eos_reads_the_last_real_token() {
    let dev = Cpu::default();
    let e = expected("pad_is_eos");
    let rm = RewardModel::load(&fixture("pad_is_eos"), &dev).unwrap();
    assert_eq!(rm.pad_id(), 2);
    let s = seqs(&e);
    assert!(
        s.iter().all(|r| *r.last().unwrap() == 2),
        "fixture rows end with EOS == pad"
    );
    let ours = rm.raw_scores(&s, 8).unwrap();
    // the score at the final EOS, from transformers' hidden states and score.weight
    assert_close(&ours, &floats(&e["batched"]), "pad_is_eos batched");
    let single: Vec<f32> = e["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["last_real"].as_f64().unwrap() as f32)
        .collect();
    assert_close(&ours, &single, "pad_is_eos vs single rows");
    // transformers' pad-equality rule reads a different token here (the bug we avoid)
    let hf = floats(&e["hf_pad_equality"]);
    assert!(
        ours.iter().zip(&hf).all(|(a, b)| (a - b).abs() > 1e-3),
        "expected to differ from pad-equality: {ours:?} vs {hf:?}"
    );
}

#[test]
fn a_model_with_pad_equal_to_eos_is_written_so_transformers_scores_the_final_eos() {
    let dev = Cpu::default();
    let e = expected("pad_is_eos");
    let rm = RewardModel::load(&fixture("pad_is_eos"), &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    rm.save(&out, DType::F32).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let pad = cfg["pad_token_id"].as_u64().unwrap() as u32;
    assert_ne!(pad, 2, "the written pad must not be EOS");
    let s = seqs(&e);
    // transformers' rule: the rightmost token that is not the pad id
    for row in &s {
        let hf_last = row.iter().rposition(|&t| t != pad).unwrap();
        assert_eq!(hf_last, row.len() - 1, "{row:?}");
    }
    let ours = rm.raw_scores(&s, 8).unwrap();
    check_with_transformers(&out, &s, &ours);
}

#[test]
fn the_written_pad_is_a_special_token_that_ends_nothing() {
    // a Llama-3-style tokenizer without a pad token: EOS <|eot_id|>, end of text, reserved tokens
    let dev = Cpu::default();
    let mut rm = RewardModel::load(&fixture("pad_is_eos"), &dev).unwrap();
    let added = serde_json::json!({"added_tokens": [
        {"id": 1, "content": "<|begin_of_text|>", "special": true},
        {"id": 2, "content": "<|eot_id|>", "special": true},
        {"id": 40, "content": "<|end_of_text|>", "special": true},
        {"id": 41, "content": "<|start_header_id|>", "special": true},
        {"id": 45, "content": "<|reserved_special_token_0|>", "special": true}
    ]});
    rm.files
        .insert("tokenizer.json".into(), added.to_string().into_bytes());
    rm.files.insert(
        "tokenizer_config.json".into(),
        br#"{"eos_token": "<|eot_id|>", "bos_token": "<|begin_of_text|>"}"#.to_vec(),
    );
    assert_eq!(
        rm.export_pad(),
        (45, Some("<|reserved_special_token_0|>".into()))
    );
    let dir = tempfile::tempdir().unwrap();
    rm.save(&dir.path().join("rm"), DType::F32).unwrap();
    let tc: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("rm/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["pad_token"], "<|reserved_special_token_0|>");
}

#[test]
fn last_token_comes_from_the_mask_not_the_ids() {
    // a row whose real tokens include the pad id (EOS == pad) in the middle and at the end
    let b = Batch::right_padded(&[vec![1, 2, 5, 2], vec![1, 5]], 2).unwrap();
    assert_eq!(last_token_indices(&b).unwrap(), vec![3, 4 + 1]);
}

#[test]
fn save_load_round_trip_and_transformers_reads_our_directory() {
    let dev = Cpu::default();
    let mut rm = RewardModel::load(&fixture("gqa"), &dev).unwrap();
    rm.normalization = Normalization {
        gain: 2.0,
        bias: -0.5,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    rm.save(&out, DType::F32).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["num_labels"], 1);
    assert_eq!(cfg["pad_token_id"], 0);
    let back = RewardModel::load(&out, &dev).unwrap();
    assert_eq!(back.normalization, rm.normalization);
    let s = seqs(&expected("gqa"));
    let raw = rm.raw_scores(&s, 4).unwrap();
    assert_eq!(back.raw_scores(&s, 4).unwrap(), raw);
    let norm = back.rewards(&s, 4).unwrap();
    for (n, r) in norm.iter().zip(&raw) {
        assert!((n - (2.0 * r - 0.5)).abs() < 1e-6);
    }
    // safetensors metadata format=pt (transformers refuses files without it)
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    check_with_transformers(&out, &s, &raw);
}

/// Runs scripts/check_rm_roundtrip.py when the repository's venv exists.
fn check_with_transformers(dir: &Path, s: &[Vec<u32>], ours: &[f32]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".venv/bin/python");
    if !py.exists() {
        eprintln!(
            "skipping the transformers round trip: {} not found",
            py.display()
        );
        return;
    }
    let seqs_path = dir.join("..").join("seqs.json");
    std::fs::write(&seqs_path, serde_json::json!({"sequences": s}).to_string()).unwrap();
    let out = std::process::Command::new(py)
        .arg(root.join("scripts/check_rm_roundtrip.py"))
        .arg(dir)
        .arg(&seqs_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_rm_roundtrip.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_close(ours, &floats(&v["single"]), "round trip single");
    assert_close(ours, &floats(&v["batched"]), "round trip batched");
}
