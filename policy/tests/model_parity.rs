//! Parity with Hugging Face transformers on tiny random checkpoints made by
//! scripts/make_model_fixtures.py (fixtures committed under tests/fixtures/model).
mod common;

use common::{expected, ids, model_fixture as fixture};
use dfdx::prelude::*;
use policy::checkpoint::Checkpoint;
use policy::config::DType;
use serde_json::Value;

const CASES: &[&str] = &["gqa_llama3_rope", "tied_bf16", "mqa_linear_sharded"];
const TOL: f32 = 1e-4;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
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
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= TOL,
            "{what}: token {i}: ours {a} vs transformers {b}"
        );
    }
}

fn check_logprobs(ck: &Checkpoint<Cpu>, exp: &Value, name: &str) {
    let seqs: Vec<Vec<u32>> = exp["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ids(&s["tokens"]))
        .collect();
    // one at a time
    for (s, e) in seqs.iter().zip(exp["sequences"].as_array().unwrap()) {
        if s.len() < 2 {
            continue;
        }
        let ours = ck.model.sequence_logprobs(std::slice::from_ref(s)).unwrap();
        assert_close(
            &ours[0],
            &floats(&e["logprobs"]),
            &format!("{name} single len {}", s.len()),
        );
    }
    // right-padded batch
    let long: Vec<Vec<u32>> = seqs.iter().filter(|s| s.len() >= 2).cloned().collect();
    let ours = ck.model.sequence_logprobs(&long).unwrap();
    for (i, e) in exp["batched"].as_array().unwrap().iter().enumerate() {
        assert_close(&ours[i], &floats(e), &format!("{name} batched row {i}"));
    }
}

#[test]
fn logprobs_match_transformers() {
    let dev = Cpu::default();
    for name in CASES {
        let ck = Checkpoint::load(&fixture(name), &dev).unwrap();
        check_logprobs(&ck, &expected(name), name);
    }
}

#[test]
fn save_then_load_gives_the_same_model() {
    let dev = Cpu::default();
    for name in CASES {
        let ck = Checkpoint::load(&fixture(name), &dev).unwrap();
        let dtype = ck.model.cfg.dtype;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        ck.save(&out, dtype).unwrap();
        let back = Checkpoint::load(&out, &dev).unwrap();
        assert_eq!(back.model.cfg, ck.model.cfg, "{name}: config");
        assert_eq!(
            back.model.to_host_tensors(),
            ck.model.to_host_tensors(),
            "{name}: weights"
        );
        check_logprobs(&back, &expected(name), name);
        // the safetensors header carries HF's metadata and the storage dtype
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["format"], "pt");
        let want = if dtype == DType::BF16 { "BF16" } else { "F32" };
        assert_eq!(header["model.embed_tokens.weight"]["dtype"], want, "{name}");
    }
}
