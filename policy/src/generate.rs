//! Batched generation with a KV cache: prompts of different lengths are
//! left-padded into one batch, RoPE positions follow each row's real tokens,
//! and every row samples with its own seeded RNG, so a prompt's output does
//! not depend on what else is in the batch.
use crate::checkpoint::Checkpoint;
use crate::cpu::decode::{HostKv, HostModel};
use crate::model::{Batch, Dev, KvCache, Llama};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// How to pick the next token.
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// Most new tokens per prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Seed of the per-prompt random streams.
    pub seed: u64,
    /// Tokens that end a sequence (kept in the output), e.g. EOS and end-of-turn.
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: vec![],
        }
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// The continuation of one prompt.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// New tokens, including the stop token if one was produced.
    pub tokens: Vec<u32>,
    /// log p(token) under softmax(logits / temperature) (temperature 1 when greedy),
    /// before top-k/top-p filtering — the quantity PPO needs.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    // f64 sum: see the CPU target_logprobs op
    let lse = m as f64 + x.iter().map(|v| (v - m).exp() as f64).sum::<f64>().ln();
    x.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// Picks a token from one row of logits; returns it with its log-prob.
pub fn sample_token(logits: &[f32], cfg: &SamplingConfig, rng: &mut StdRng) -> (u32, f32) {
    if cfg.temperature <= 0.0 {
        let (best, _) =
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        return (best as u32, log_softmax(logits)[best]);
    }
    let scaled: Vec<f32> = logits.iter().map(|v| v / cfg.temperature).collect();
    let logp = log_softmax(&scaled);
    // Candidates sorted by probability, then cut by top-k and top-p (HF's order).
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_unstable_by(|&a, &b| logp[b].total_cmp(&logp[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k.max(1));
    }
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = 0;
        for &i in &order {
            cum += logp[i].exp();
            keep += 1;
            if cum >= cfg.top_p {
                break;
            }
        }
        order.truncate(keep.max(1));
    }
    let total: f32 = order.iter().map(|&i| logp[i].exp()).sum();
    let mut u = rng.gen::<f32>() * total;
    for &i in &order {
        u -= logp[i].exp();
        if u <= 0.0 {
            return (i as u32, logp[i]);
        }
    }
    let last = *order.last().unwrap();
    (last as u32, logp[last])
}

/// Generates a continuation for every prompt, all in one batch.
pub fn generate<D: Dev>(
    model: &Llama<D>,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
) -> Result<Vec<Generation>> {
    generate_on(model, prompts, cfg, D::HOST_DECODING)
}

/// Where the forward passes of one `generate` call run.
enum Engine<D: Dev> {
    /// dfdx ops on the model's device, with a growing [`KvCache`].
    Dfdx(KvCache<D>),
    /// Host buffers: a weight snapshot and a preallocated cache (the CPU path).
    Host(HostModel, HostKv),
}

impl<D: Dev> Engine<D> {
    /// Logits `(batch, vocab)` of the tokens at `last_rows` (row-major
    /// `batch*seq` indices) of `batch`, extending the cache.
    fn step(&mut self, model: &Llama<D>, batch: &Batch, last_rows: &[usize]) -> Result<Vec<f32>> {
        match self {
            Engine::Dfdx(cache) => {
                let hidden = model.hidden(model.embed_tokens.clone(), batch, Some(cache))?;
                let idx = model
                    .dev
                    .tensor_from_vec(last_rows.to_vec(), (batch.batch,));
                let last = dfdx::tensor_ops::GatherTo::gather(hidden, idx);
                Ok(model.logits(last).as_vec())
            }
            Engine::Host(m, kv) => {
                debug_assert!(last_rows
                    .iter()
                    .enumerate()
                    .all(|(b, &r)| r == b * batch.seq + batch.seq - 1));
                model.check_tokens(&batch.tokens)?;
                Ok(m.step(
                    kv,
                    &batch.tokens,
                    &batch.positions,
                    &batch.key_mask,
                    batch.seq,
                ))
            }
        }
    }
}

fn generate_on<D: Dev>(
    model: &Llama<D>,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    host: bool,
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        bail!("prompt {i} is empty; generation needs at least one prompt token");
    }
    if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
        bail!(
            "temperature must be a finite number >= 0, got {}",
            cfg.temperature
        );
    }
    if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
        bail!("top_p must be in (0, 1], got {}", cfg.top_p);
    }
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let bsz = prompts.len();
    let plen = prompts.iter().map(Vec::len).max().unwrap();
    let mut batch = Batch {
        batch: bsz,
        seq: plen,
        tokens: vec![],
        positions: vec![],
        key_mask: vec![],
    };
    for p in prompts {
        let offset = plen - p.len();
        for j in 0..plen {
            let real = j >= offset;
            batch.tokens.push(if real { p[j - offset] } else { pad });
            batch.positions.push(j.saturating_sub(offset));
            batch.key_mask.push(real);
        }
    }
    let mut key_mask: Vec<Vec<bool>> = batch.key_mask.chunks(plen).map(<[bool]>::to_vec).collect();
    let mut rngs: Vec<StdRng> = (0..bsz)
        .map(|i| {
            StdRng::seed_from_u64(
                cfg.seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(i as u64),
            )
        })
        .collect();
    let mut out: Vec<Generation> = (0..bsz)
        .map(|_| Generation {
            tokens: vec![],
            logprobs: vec![],
            finish_reason: FinishReason::Length,
        })
        .collect();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut done = vec![false; bsz];
    let mut engine = if host {
        let m = HostModel::new(model);
        // Room for the whole generation up front (bounded; the cache grows past it if needed).
        let kv = HostKv::new(&m, bsz, plen + cfg.max_new_tokens.min(4096));
        Engine::Host(m, kv)
    } else {
        Engine::Dfdx(KvCache::new())
    };
    let mut seen = 0;
    let vocab = model.cfg.vocab_size;
    let mut last_rows: Vec<usize> = (0..bsz).map(|b| b * plen + plen - 1).collect();
    for step in 0..cfg.max_new_tokens {
        let logits = engine.step(model, &batch, &last_rows)?;
        seen += batch.seq;
        let mut next = Vec::with_capacity(bsz);
        for b in 0..bsz {
            if done[b] {
                next.push(pad);
                continue;
            }
            let (tok, lp) = sample_token(&logits[b * vocab..(b + 1) * vocab], cfg, &mut rngs[b]);
            out[b].tokens.push(tok);
            out[b].logprobs.push(lp);
            if cfg.stop_tokens.contains(&tok) {
                done[b] = true;
                out[b].finish_reason = FinishReason::Stop;
            }
            next.push(tok);
        }
        if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        // Feed the new tokens; finished rows feed a masked pad.
        let mut positions = Vec::with_capacity(bsz);
        let mut mask = Vec::with_capacity(bsz * (seen + 1));
        for b in 0..bsz {
            positions.push(prompts[b].len() + step);
            key_mask[b].push(!done[b]);
            mask.extend_from_slice(&key_mask[b]);
        }
        batch = Batch {
            batch: bsz,
            seq: 1,
            tokens: next,
            positions,
            key_mask: mask,
        };
        last_rows = (0..bsz).collect();
    }
    Ok(out)
}

/// The ids generation stops on: the checkpoint's EOS ids plus the tokenizer's EOS.
pub fn stop_tokens<D: Dev>(ck: &Checkpoint<D>, tok: &Tokenizer) -> Vec<u32> {
    let mut ids = ck.eos_ids();
    ids.extend(tok.eos_id());
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tiny_llama;

    #[test]
    fn host_decoding_matches_dfdx_decoding() {
        // GQA (4 heads, 2 KV heads), untied head, prompts of different lengths (left padding).
        let model = tiny_llama(
            serde_json::json!({
                "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
                "tie_word_embeddings": false, "pad_token_id": 0
            }),
            3,
            0.2,
        );
        let prompts: Vec<Vec<u32>> = vec![
            vec![5, 9, 13, 2, 40],
            vec![7],
            vec![11, 3, 60],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ];
        for sc in [
            SamplingConfig {
                max_new_tokens: 12,
                temperature: 0.0,
                ..Default::default()
            },
            SamplingConfig {
                max_new_tokens: 9,
                temperature: 0.8,
                top_k: 20,
                seed: 5,
                stop_tokens: vec![17, 23],
                ..Default::default()
            },
        ] {
            let a = generate_on(&model, &prompts, &sc, false).unwrap();
            let b = generate_on(&model, &prompts, &sc, true).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.tokens, y.tokens);
                assert_eq!(x.finish_reason, y.finish_reason);
                for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                    assert!((p - q).abs() < 1e-4, "{p} vs {q}");
                }
            }
        }
    }
}
