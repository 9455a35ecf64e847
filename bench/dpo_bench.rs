//! DPO update throughput on the `small` policy shape: full optimizer steps of
//! the shared training loop (forward over chosen + rejected rows, sigmoid DPO
//! loss against precomputed reference log-probs, backward, global-norm clip,
//! AdamW). The reference is bench/dpo_bench.py (TRL's DPOTrainer, same shape,
//! data and batch).
//!
//!     cargo run --release -p trainer --example dpo_bench [pairs] [prompt_len] [response_len] [steps]
//!
//! Prints one JSON line; step time = batch / the loop's logged samples per second.
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::model::Llama;
use policy::train::AdamWConfig;
use policy::train_loop::{self, LoopConfig, ScheduleKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use trainer::data::PreferencePair;
use trainer::dpo::{DpoConfig, DpoStage};
use trainer::policy_io::PolicyFiles;

#[path = "common.rs"]
mod common;
use common::peak_rss_mib;

/// The `small` preset shape with random weights.
pub fn small(dev: &Cpu) -> anyhow::Result<Llama<Cpu>> {
    let cfg = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 4, "vocab_size": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": false, "pad_token_id": 0, "eos_token_id": 2
    }))?;
    Llama::random(cfg, dev, 0, 0.02)
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (pairs, plen, rlen, steps) = (arg(1, 8), arg(2, 64), arg(3, 64), arg(4, 4) as u64);
    let warmup = 2u64;
    let dev = Cpu::default();
    let mut model = small(&dev)?;
    let params: usize = model.to_host_tensors().values().map(|t| t.data.len()).sum();
    let mut rng = StdRng::seed_from_u64(0);
    let mut seq = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(3..4096)).collect() };
    let data: Vec<PreferencePair> = (0..pairs as u64 * (warmup + steps))
        .map(|_| PreferencePair {
            prompt: seq(plen),
            chosen: seq(rlen),
            rejected: seq(rlen),
        })
        .collect();
    let t0 = std::time::Instant::now();
    let reference = model.clone();
    let mut stage = DpoStage::new(
        DpoConfig::default(),
        &reference,
        data,
        vec![],
        PolicyFiles::default(),
        pairs * 2,
    )?;
    let ref_s = t0.elapsed().as_secs_f64();
    drop(reference);
    let cfg = LoopConfig {
        lr: 1e-6,
        batch_size: pairs,
        micro_batch: pairs,
        max_steps: Some(warmup + steps),
        schedule: ScheduleKind::Cosine,
        adamw: AdamWConfig::default(),
        log_every: 1,
        progress: false,
        ..LoopConfig::default()
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("dpo");
    train_loop::run(&mut model, &mut stage, &cfg, &out, None)?;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(train_loop::metrics_path(&out))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let timed: Vec<f64> = lines
        .iter()
        .skip(warmup as usize)
        .filter_map(|l| l["train_samples_per_second"].as_f64())
        .map(|sps| pairs as f64 / sps)
        .collect();
    let step_s = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{}",
        serde_json::json!({"impl": "rlhf (dfdx 0.13)", "bench": "dpo", "threads": threads, "params": params, "pairs": pairs,
                           "prompt_len": plen, "response_len": rlen, "step_s": step_s,
                           "tokens_per_s": (2 * pairs * (plen + rlen)) as f64 / step_s, "pairs_per_s": pairs as f64 / step_s,
                           "ref_precompute_s": ref_s, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}
