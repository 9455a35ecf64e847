//! PPO iteration throughput on the `small` policy shape, with the split
//! between generation and training: rollouts of exactly `response_len` new
//! tokens (no stop token), scoring by a reward model, old/reference log-probs
//! and values, GAE, then the clipped policy and value updates. The reference
//! is bench/ppo_bench.py (TRL's PPOTrainer, same shapes and batch).
//!
//!     cargo run --release -p trainer --example ppo_bench [prompts] [prompt_len] [response_len] [iterations]
//!
//! Prints one JSON line with the means over the timed iterations (after one warm-up).
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::model::Llama;
use policy::train::AdamWConfig;
use policy::train_loop::{metrics_path, LoopConfig, ScheduleKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reward_model::combine::SingleReward;
use reward_model::data::Content;
use reward_model::model::RewardModel;
use trainer::data::Prompt;
use trainer::policy_io::PolicyFiles;
use trainer::ppo::{self, PpoConfig, PpoModels};
use trainer::ppo_math::KlController;
use trainer::reward::Reward;

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
    let (n, plen, rlen, iters) = (arg(1, 16), arg(2, 16), arg(3, 64), arg(4, 2) as u64);
    let epochs = std::env::var("PPO_EPOCHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cfg = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 4, "vocab_size": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": false, "pad_token_id": 0, "eos_token_id": 2
    }))?;
    let dev = Cpu::default();
    let actor = Llama::random(cfg.clone(), &dev, 0, 0.02)?;
    let head = |seed: u64| -> anyhow::Result<RewardModel<Cpu>> {
        let lm = Llama::random(cfg.clone(), &dev, seed, 0.02)?;
        RewardModel::from_backbone(
            Llama::backbone_from_tensors(cfg.clone(), lm.to_host_tensors(), &dev)?,
            seed,
            0.02,
        )
    };
    let reward = Reward::Model(Box::new(SingleReward {
        model: head(1)?,
        batch_size: n,
    }));
    let mut models = PpoModels {
        reference: actor.clone(),
        actor,
        critic: head(2)?,
        files: PolicyFiles::default(),
    };
    let params: usize = models
        .actor
        .to_host_tensors()
        .values()
        .map(|t| t.data.len())
        .sum();
    let mut rng = StdRng::seed_from_u64(0);
    let prompts: Vec<Prompt> = (0..n * (1 + iters as usize))
        .map(|_| Prompt {
            content: Content::Text(String::new()),
            ids: (0..plen).map(|_| rng.gen_range(3..4096)).collect(),
            unsafe_prompt: false,
        })
        .collect();
    let mut c = PpoConfig::trl();
    c.train = LoopConfig {
        lr: 1e-6,
        batch_size: n,
        micro_batch: n / 2,
        max_steps: Some(1 + iters),
        schedule: ScheduleKind::Cosine,
        adamw: AdamWConfig::default(),
        progress: false,
        ..c.train
    };
    c.ppo_epochs = epochs;
    c.mini_batches = 2;
    c.temperature = 1.0;
    c.max_new_tokens = rlen;
    c.kl = KlController {
        beta: 0.05,
        adaptive: None,
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("ppo");
    ppo::train(&mut models, &reward, None, &prompts, &c, &out, None)?;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(metrics_path(&out))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mean = |k: &str| {
        lines[1..].iter().filter_map(|l| l[k].as_f64()).sum::<f64>()
            / (lines.len() - 1).max(1) as f64
    };
    let (g, s, t) = (
        mean("time/generate_s"),
        mean("time/score_s"),
        mean("time/train_s"),
    );
    let it_s = n as f64 / mean("eps");
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{}",
        serde_json::json!({"impl": "rlhf (dfdx 0.13)", "bench": "ppo", "threads": threads, "params_policy": params, "prompts": n,
                           "prompt_len": plen, "response_len": rlen, "ppo_epochs": epochs, "iteration_s": it_s, "generate_s": g, "score_s": s,
                           "train_s": t, "episodes_per_s": n as f64 / it_s, "tokens_per_s": (n * (plen + rlen)) as f64 / it_s,
                           "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}
