//! Helpers the integration tests share: the committed model fixtures
//! (tiny random checkpoints made by scripts/make_model_fixtures.py, with
//! what transformers computes on them) and reading their JSON.
// Each test file compiles this module and uses part of it.
#![allow(dead_code)]
use dfdx::prelude::*;
use policy::checkpoint::Checkpoint;
use serde_json::Value;
use std::path::PathBuf;

/// The directory of model fixture `name`: under tests/fixtures/model, or
/// under POLICY_FIXTURES where that is set (the GPU machine runs a copy of
/// the tree at another path).
pub fn model_fixture(name: &str) -> PathBuf {
    let root = std::env::var("POLICY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model"));
    root.join(name)
}

/// Model fixture `name`, loaded on the CPU.
pub fn load_model_fixture(name: &str) -> Checkpoint<Cpu> {
    Checkpoint::load(&model_fixture(name), &Cpu::default()).unwrap()
}

/// `expected.json` of model fixture `name`: what transformers computed.
pub fn expected(name: &str) -> Value {
    let path = model_fixture(name).join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A JSON list of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
