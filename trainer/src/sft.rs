//! Supervised fine-tuning: token NLL on the trained tokens only (the prompt
//! and non-assistant turns masked, Llama-2 style), mean over the trained
//! tokens of each optimizer batch.
use crate::data::Sequence;
use crate::logprobs::{masked_row_sums, token_logprobs, TargetBatch};
use crate::policy_io::PolicyFiles;
use anyhow::Result;
use dfdx::prelude::*;
use policy::config::DType;
use policy::model::{Dev, Llama};
use policy::train::ParamTensors;
use policy::train_loop::{Fingerprint, Metrics, Stage};
use std::path::Path;

/// SFT as a stage of the shared loop.
pub struct SftStage {
    pub train: Vec<Sequence>,
    pub eval: Vec<Sequence>,
    pub files: PolicyFiles,
    /// Rows per forward pass when evaluating.
    pub eval_batch: usize,
    /// Stage name stored with checkpoints (`sft`, or `rs` for rejection-sampling fine-tuning).
    pub name: &'static str,
}

/// Mean NLL per trained token of `seqs` (no gradients).
pub fn mean_nll<D: Dev>(model: &Llama<D>, seqs: &[Sequence], batch_size: usize) -> Result<f64> {
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let sums = crate::logprobs::sequence_logprob_sums(model, &refs, batch_size, 1.0)?;
    let tokens: usize = seqs.iter().map(Sequence::targets).sum();
    Ok(-sums.iter().map(|&s| s as f64).sum::<f64>() / tokens.max(1) as f64)
}

impl<D: Dev> Stage<D> for SftStage {
    type Model = Llama<D>;

    fn name(&self) -> &'static str {
        self.name
    }

    fn len(&self) -> usize {
        self.train.len()
    }

    fn weight(&self, i: usize) -> f64 {
        self.train[i].targets().max(1) as f64
    }

    fn micro_step(
        &mut self,
        model: &Llama<D>,
        examples: &[usize],
        scale: f32,
    ) -> Result<(ParamTensors<D>, Metrics)> {
        let rows: Vec<&Sequence> = examples.iter().map(|&i| &self.train[i]).collect();
        let tb = TargetBatch::new(&rows, model.cfg.pad_token_id.unwrap_or(0))?;
        let lp = token_logprobs(
            model,
            model.embed_tokens.trace(Gradients::leaky()),
            &tb,
            1.0,
        )?;
        let sums = masked_row_sums(model, lp, &tb);
        let total: f64 = sums.as_vec().iter().map(|&s| s as f64).sum();
        let loss = sums.sum::<Rank0, _>().negate() * scale;
        let mut grads = loss.backward();
        let g = ParamTensors::from_backward(model, &mut grads)?;
        let tokens: usize = rows.iter().map(|s| s.targets()).sum();
        let mut m = Metrics::default();
        m.add("loss", -total, tokens as f64);
        // TRL's `num_tokens`: every input token (the loop logs the running total)
        let inputs: usize = rows.iter().map(|s| s.ids.len()).sum();
        m.add("num_tokens", inputs as f64, 1.0);
        Ok((g, m))
    }

    fn evaluate(&mut self, model: &Llama<D>) -> Result<Option<Metrics>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let nll = mean_nll(model, &self.eval, self.eval_batch)?;
        let mut m = Metrics::default();
        m.add("loss", nll, 1.0);
        Ok(Some(m))
    }

    fn write_model(&self, model: &Llama<D>, dir: &Path, dtype: DType) -> Result<()> {
        self.files.write_into(model, dir, dtype)
    }

    fn fingerprint(&self) -> String {
        let mut f = Fingerprint::default();
        for s in &self.train {
            f.feed_tokens(&s.ids);
            f.feed(
                s.mask
                    .iter()
                    .fold(0u64, |a, &m| a.wrapping_mul(3).wrapping_add(m as u64)),
            );
        }
        f.hex()
    }
}
