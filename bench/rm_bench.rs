//! Reward-model training throughput: pairs/s of full optimizer steps
//! (forward over chosen + rejected rows, Bradley–Terry loss, backward,
//! global-norm clip, AdamW) on the `small` policy shape. The reference is
//! bench/rm_bench.py (TRL's RewardTrainer on the same shape and batch).
//!
//!     cargo run --release -p reward-model --example rm_bench [pairs] [seq] [steps]
//!
//! Prints one JSON line.
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::model::Llama;
use policy::train::{AdamW, AdamWConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reward_model::data::EncodedPair;
use reward_model::model::RewardModel;
use reward_model::train::train_step;

#[path = "common.rs"]
mod common;
use common::peak_rss_mib;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (pairs, seq, steps) = (arg(1, 8), arg(2, 64), arg(3, 4));
    let cfg = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 4, "vocab_size": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": false, "pad_token_id": 0, "eos_token_id": 2
    }))?;
    let dev = Cpu::default();
    let lm = Llama::random(cfg.clone(), &dev, 0, 0.02)?;
    let backbone = Llama::backbone_from_tensors(cfg, lm.to_host_tensors(), &dev)?;
    drop(lm);
    let mut rm = RewardModel::from_backbone(backbone, 0, 0.02)?;
    let params: usize = rm.to_host_tensors().values().map(|t| t.data.len()).sum();
    let mut rng = StdRng::seed_from_u64(0);
    let data: Vec<EncodedPair> = (0..pairs)
        .map(|i| EncodedPair {
            group: i.to_string(),
            chosen: (0..seq).map(|_| rng.gen_range(3..4096)).collect(),
            rejected: (0..seq).map(|_| rng.gen_range(3..4096)).collect(),
            margin: 0.0,
            strength: None,
        })
        .collect();
    let batch: Vec<&EncodedPair> = data.iter().collect();
    let mut opt = AdamW::new(&rm, AdamWConfig::default());
    for _ in 0..2 {
        train_step(&mut rm, &mut opt, &batch, pairs, 0.0, 1.0, 1e-5)?;
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        train_step(&mut rm, &mut opt, &batch, pairs, 0.0, 1.0, 1e-5)?;
    }
    let secs = t0.elapsed().as_secs_f64() / steps as f64;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{}",
        serde_json::json!({"impl": "rlhf (dfdx 0.13)", "bench": "rm_train_step", "threads": threads, "pairs": pairs, "seq": seq,
                           "params": params, "step_s": secs, "pairs_per_s": pairs as f64 / secs, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}
