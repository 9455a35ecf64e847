//! Log-probabilities of given tokens over batches of sequences — the
//! primitive SFT, DPO, rejection sampling and PPO share. Sequences are
//! right-padded into one batch; position `i` of a row predicts token `i + 1`.
use crate::data::Sequence;
use anyhow::{bail, Result};
use dfdx::prelude::*;
use policy::model::{Batch, Dev, Llama, T1, T2};

/// A right-padded batch with the next-token targets and loss weights.
pub struct TargetBatch {
    pub batch: Batch,
    /// `rows × seq` next tokens (pad where there is none).
    pub targets: Vec<u32>,
    /// `rows × seq`: 1 where the next token is a training target, else 0.
    pub weights: Vec<f32>,
}

impl TargetBatch {
    /// Builds the batch of `seqs`, padded with `pad`.
    pub fn new(seqs: &[&Sequence], pad: u32) -> Result<Self> {
        if let Some(i) = seqs.iter().position(|s| s.ids.len() != s.mask.len()) {
            bail!(
                "sequence {i} has {} tokens but {} mask entries",
                seqs[i].ids.len(),
                seqs[i].mask.len()
            );
        }
        let rows: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
        let batch = Batch::right_padded(&rows, pad)?;
        let seq = batch.seq;
        let mut targets = Vec::with_capacity(rows.len() * seq);
        let mut weights = Vec::with_capacity(rows.len() * seq);
        for s in seqs {
            for i in 0..seq {
                let next = i + 1 < s.ids.len();
                targets.push(if next { s.ids[i + 1] } else { pad });
                weights.push(if next && s.mask[i + 1] { 1.0 } else { 0.0 });
            }
        }
        Ok(TargetBatch {
            batch,
            targets,
            weights,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batch.batch
    }
}

/// Per-position log-probs `(rows·seq,)` of the targets under
/// `softmax(logits / temperature)`, recording on `embed`'s tape.
pub fn token_logprobs<D: Dev, T: Tape<f32, D> + Merge<NoneTape>>(
    model: &Llama<D>,
    embed: T2<D, T>,
    tb: &TargetBatch,
    temperature: f32,
) -> Result<T1<D, T>> {
    let h = model.hidden(embed, &tb.batch, None)?;
    model.target_logprobs(h, &tb.targets, temperature)
}

/// Per-row sums `(rows,)` of `lp` over the trained positions.
pub fn masked_row_sums<D: Dev, T: Tape<f32, D>>(
    model: &Llama<D>,
    lp: T1<D, T>,
    tb: &TargetBatch,
) -> T1<D, T> {
    let (rows, seq) = (tb.batch.batch, tb.batch.seq);
    let w = model.dev.tensor_from_vec(tb.weights.clone(), (rows * seq,));
    (lp * w)
        .reshape_like(&(rows, seq))
        .sum::<(usize,), Axis<1>>()
}

/// Summed log-probs of the trained tokens of each sequence (no gradients),
/// in batches of `batch_size` rows; results in input order.
pub fn sequence_logprob_sums<D: Dev>(
    model: &Llama<D>,
    seqs: &[&Sequence],
    batch_size: usize,
    temperature: f32,
) -> Result<Vec<f32>> {
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    // similar lengths together: less padding
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].ids.len());
    let mut out = vec![0f32; seqs.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<&Sequence> = chunk.iter().map(|&i| seqs[i]).collect();
        let tb = TargetBatch::new(&rows, pad)?;
        let lp = token_logprobs(model, model.embed_tokens.clone(), &tb, temperature)?;
        let sums = masked_row_sums(model, lp, &tb).as_vec();
        for (&i, s) in chunk.iter().zip(sums) {
            out[i] = s;
        }
    }
    Ok(out)
}

pub use policy::train::{softplus, softplus_f64};

#[cfg(test)]
mod tests {
    use super::*;
    use policy::config::LlamaConfig;

    #[test]
    fn sums_match_the_model_sequence_logprobs() {
        let cfg = LlamaConfig::from_json(
            &serde_json::json!({"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 13}),
        )
        .unwrap();
        let m = Llama::random(cfg, &Cpu::default(), 3, 0.5).unwrap();
        let a = Sequence::prompt_response(&[1, 4, 5], &[6, 7]);
        let b = Sequence::prompt_response(&[2], &[3, 3, 9, 10]);
        let sums = sequence_logprob_sums(&m, &[&a, &b], 8, 1.0).unwrap();
        let full = m
            .sequence_logprobs(&[a.ids.clone(), b.ids.clone()])
            .unwrap();
        // a: targets are tokens 3 and 4 → log-probs at positions 2 and 3 (0-based, of the shifted list)
        let want_a = full[0][2] + full[0][3];
        let want_b: f32 = full[1].iter().sum();
        assert!((sums[0] - want_a).abs() < 1e-5, "{} vs {want_a}", sums[0]);
        assert!((sums[1] - want_b).abs() < 1e-5, "{} vs {want_b}", sums[1]);
        // batch size 1 gives the same numbers
        let one = sequence_logprob_sums(&m, &[&a, &b], 1, 1.0).unwrap();
        assert!((one[0] - sums[0]).abs() < 1e-5 && (one[1] - sums[1]).abs() < 1e-5);
    }

    #[test]
    fn softplus_is_stable() {
        let dev = Cpu::default();
        let x = dev.tensor_from_vec(vec![-100.0f32, 0.0, 100.0], (3,));
        let y = softplus(x).as_vec();
        assert!(y[0] >= 0.0 && y[0] < 1e-30);
        assert!((y[1] - 2f32.ln()).abs() < 1e-6);
        assert!((y[2] - 100.0).abs() < 1e-4);
        assert!((softplus_f64(0.0) - 2f64.ln()).abs() < 1e-12);
    }
}
