//! Policy benchmark: training step (forward + backward) and batched KV-cache
//! generation on the `small` preset shape with random weights. The same
//! workload in PyTorch / transformers is bench/policy_bench.py; run both with
//! bench/run_policy_bench.sh. Prints one JSON line.
//!
//!   cargo run --release -p policy --example policy_bench -- train|generate [cpu|cuda]
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::generate::{generate, SamplingConfig};
use policy::model::{Batch, Dev, Llama};
use policy::train::ParamTensors;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

fn small_config() -> LlamaConfig {
    // The `rlhf policy init --preset small` shape, with a 4096-token vocabulary.
    LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": false, "pad_token_id": 0
    }))
    .unwrap()
}

#[path = "common.rs"]
mod common;
use common::peak_rss_mib;

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "train".into());
    match std::env::args().nth(2).as_deref().unwrap_or("cpu") {
        "cpu" => run(&what, Cpu::default(), "cpu"),
        #[cfg(feature = "cuda")]
        "cuda" => run(&what, Cuda::default(), "cuda"),
        other => panic!("unknown device {other:?} (cpu, or cuda in a --features cuda build)"),
    }
}

fn run<D: Dev>(what: &str, dev: D, device: &str) {
    let cfg = small_config();
    let model = Llama::random(cfg.clone(), &dev, 0, 0.02).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let threads = rayon_threads();
    match what {
        "train" => {
            let (b, t) = (8, 128);
            let rows: Vec<Vec<u32>> = (0..b)
                .map(|_| {
                    (0..t)
                        .map(|_| rng.gen_range(1..cfg.vocab_size as u32))
                        .collect()
                })
                .collect();
            let batch = Batch::right_padded(&rows, 0).unwrap();
            let targets: Vec<u32> = (0..b * t)
                .map(|i| {
                    if (i + 1) % t == 0 {
                        0
                    } else {
                        batch.tokens[i + 1]
                    }
                })
                .collect();
            let step = || {
                let h = model
                    .hidden(model.embed_tokens.trace(Gradients::leaky()), &batch, None)
                    .unwrap();
                let lp = model.target_logprobs(h, &targets, 1.0).unwrap();
                let loss = lp.mean::<Rank0, _>().negate();
                let mut grads = loss.backward();
                ParamTensors::from_backward(&model, &mut grads).unwrap()
            };
            for _ in 0..2 {
                step();
            }
            let n = 5;
            let t0 = Instant::now();
            for _ in 0..n {
                step();
            }
            let secs = t0.elapsed().as_secs_f64() / n as f64;
            println!(
                "{}",
                serde_json::json!({"impl": "rlhf (dfdx)", "bench": "train_step", "device": device, "threads": threads, "batch": b, "seq": t,
                    "params": cfg.num_parameters(), "step_s": secs, "tokens_per_s": (b * t) as f64 / secs, "peak_rss_mib": peak_rss_mib()})
            );
        }
        "generate" => {
            let (b, prompt_len, new) = (16, 16, 128);
            // prompts of different lengths (8..=16 tokens)
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|i| {
                    (0..prompt_len - (i % 9))
                        .map(|_| rng.gen_range(1..cfg.vocab_size as u32))
                        .collect()
                })
                .collect();
            let sc = SamplingConfig {
                max_new_tokens: new,
                temperature: 0.0,
                ..Default::default()
            };
            generate(
                &model,
                &prompts[..2],
                &SamplingConfig {
                    max_new_tokens: 4,
                    ..sc.clone()
                },
            )
            .unwrap();
            let t0 = Instant::now();
            let out = generate(&model, &prompts, &sc).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
            println!(
                "{}",
                serde_json::json!({"impl": "rlhf (dfdx)", "bench": "generate", "device": device, "threads": threads, "batch": b, "new_tokens": new,
                    "params": cfg.num_parameters(), "total_s": secs, "new_tokens_per_s": tokens as f64 / secs, "peak_rss_mib": peak_rss_mib()})
            );
        }
        other => panic!("unknown benchmark {other:?} (train | generate)"),
    }
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
