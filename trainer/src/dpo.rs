//! Direct preference optimization (DESIGN §7): the sigmoid loss (β = 0.1),
//! cDPO label smoothing, robust DPO, IPO, and RPO's NLL term on the chosen
//! response. Reference log-probs are computed once, from a frozen copy of the
//! starting policy (or a given reference), before training; log-probs are
//! summed over response tokens only.
//!
//! Iterative DPO: each round passes its starting policy as the reference
//! (the default when `ref` is not given), which refreshes it every round;
//! passing the original SFT model instead keeps it fixed.
use crate::data::{PreferencePair, Sequence};
use crate::logprobs::{
    masked_row_sums, sequence_logprob_sums, softplus, softplus_f64, token_logprobs, TargetBatch,
};
use crate::policy_io::PolicyFiles;
use anyhow::{bail, Result};
use dfdx::prelude::*;
use policy::config::DType;
use policy::model::{Dev, Llama, T1};
use policy::train::ParamTensors;
use policy::train_loop::{Fingerprint, Metrics, Stage};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which DPO loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `−log σ(βΔ)`; with label smoothing ε it is cDPO:
    /// `−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)`.
    #[default]
    Sigmoid,
    /// Robust DPO: `(−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)`.
    Robust,
    /// IPO: `((cl/|y+| − rl/|y−|) − 1/(2β))²`.
    Ipo,
}

/// DPO hyper-parameters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DpoConfig {
    pub loss: DpoLoss,
    /// β (TRL and the DPO paper: 0.1).
    pub beta: f32,
    /// ε: the probability that a label is flipped (cDPO / robust), in [0, 0.5).
    pub label_smoothing: f32,
    /// α of RPO's `α·NLL(chosen)`, NLL the mean over all chosen tokens of the
    /// batch as in TRL; 0 = off (Llama-3 used 0.2).
    pub rpo_alpha: f32,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            rpo_alpha: 0.0,
        }
    }
}

impl DpoConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            bail!("beta must be a positive number, got {}", self.beta);
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            bail!(
                "label smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            );
        }
        if self.loss == DpoLoss::Ipo && self.label_smoothing > 0.0 {
            bail!("label smoothing applies to the sigmoid and robust losses, not IPO");
        }
        if !(self.rpo_alpha.is_finite() && self.rpo_alpha >= 0.0) {
            bail!("the RPO weight must be >= 0, got {}", self.rpo_alpha);
        }
        Ok(())
    }
}

/// The loss of one pair from summed log-ratios `cl = logπθ(y+) − logπref(y+)`,
/// `rl = logπθ(y−) − logπref(y−)` and response lengths (RPO term excluded).
pub fn pair_loss(cfg: &DpoConfig, cl: f64, rl: f64, len_chosen: usize, len_rejected: usize) -> f64 {
    let (b, e) = (cfg.beta as f64, cfg.label_smoothing as f64);
    let z = b * (cl - rl);
    match cfg.loss {
        DpoLoss::Sigmoid => (1.0 - e) * softplus_f64(-z) + e * softplus_f64(z),
        DpoLoss::Robust => ((1.0 - e) * softplus_f64(-z) - e * softplus_f64(z)) / (1.0 - 2.0 * e),
        DpoLoss::Ipo => {
            let d =
                cl / len_chosen.max(1) as f64 - rl / len_rejected.max(1) as f64 - 1.0 / (2.0 * b);
            d * d
        }
    }
}

/// Per-pair losses on device tensors, differentiable in the policy's summed
/// log-probs `pc` (chosen) and `pr` (rejected), which may share one tape.
/// With `rpo_alpha > 0` each pair also carries `α·NLL`, where NLL is the mean
/// over all chosen tokens of the batch (TRL's `nll_loss`: `−Σ pc / Σ |y+|`),
/// so the summed losses hold it once per pair as TRL's mean does.
pub fn loss_tensor<D: Dev, T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
    cfg: &DpoConfig,
    pc: T1<D, T>,
    pr: T1<D, T>,
    refc: &T1<D>,
    refr: &T1<D>,
    inv_len_c: &T1<D>,
    inv_len_r: &T1<D>,
) -> T1<D, T> {
    let (b, e) = (cfg.beta, cfg.label_smoothing);
    let nll = (cfg.rpo_alpha > 0.0).then(|| {
        let k = pc.shape().0;
        let tokens: f32 = inv_len_c.as_vec().iter().map(|x| 1.0 / x).sum();
        (pc.with_empty_tape().sum::<Rank0, _>() * (-cfg.rpo_alpha / tokens.max(1.0)))
            .broadcast_like(&(k,))
    });
    let cl = pc - refc.clone();
    let rl = pr - refr.clone();
    let per_pair = match cfg.loss {
        DpoLoss::Ipo => {
            (cl * inv_len_c.clone() - rl * inv_len_r.clone() - 1.0 / (2.0 * b)).square()
        }
        loss => {
            let z = (cl - rl) * b;
            let pos = softplus(z.with_empty_tape().negate());
            let neg = softplus(z);
            if loss == DpoLoss::Sigmoid {
                pos * (1.0 - e) + neg * e
            } else {
                (pos * (1.0 - e) - neg * e) * (1.0 / (1.0 - 2.0 * e))
            }
        }
    };
    match nll {
        Some(n) => per_pair + n,
        None => per_pair,
    }
}

/// DPO on a set of preference pairs, as a stage of the shared loop.
pub struct DpoStage {
    pub cfg: DpoConfig,
    pub pairs: Vec<PreferencePair>,
    /// Reference log-probs of (chosen, rejected) per pair.
    pub reference: Vec<(f32, f32)>,
    pub eval_pairs: Vec<PreferencePair>,
    pub eval_reference: Vec<(f32, f32)>,
    pub files: PolicyFiles,
    /// Rows per forward pass when evaluating.
    pub eval_batch: usize,
}

/// Summed response log-probs of both sides of each pair under `model`.
pub fn pair_logprobs<D: Dev>(
    model: &Llama<D>,
    pairs: &[PreferencePair],
    batch_size: usize,
) -> Result<Vec<(f32, f32)>> {
    let seqs: Vec<(Sequence, Sequence)> = pairs.iter().map(PreferencePair::sequences).collect();
    let flat: Vec<&Sequence> = seqs.iter().flat_map(|(c, r)| [c, r]).collect();
    let s = sequence_logprob_sums(model, &flat, batch_size, 1.0)?;
    Ok(s.chunks(2).map(|c| (c[0], c[1])).collect())
}

impl DpoStage {
    /// Computes the reference log-probs with `reference` (the frozen starting policy).
    pub fn new<D: Dev>(
        cfg: DpoConfig,
        reference: &Llama<D>,
        pairs: Vec<PreferencePair>,
        eval_pairs: Vec<PreferencePair>,
        files: PolicyFiles,
        eval_batch: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        let r = pair_logprobs(reference, &pairs, eval_batch)?;
        let er = pair_logprobs(reference, &eval_pairs, eval_batch)?;
        Ok(DpoStage {
            cfg,
            pairs,
            reference: r,
            eval_pairs,
            eval_reference: er,
            files,
            eval_batch,
        })
    }

    /// Metric sums of one pair; `nll` is its batch's RPO NLL (TRL's `nll_loss`).
    fn pair_metrics(
        &self,
        m: &mut Metrics,
        pc: f64,
        pr: f64,
        refs: (f32, f32),
        p: &PreferencePair,
        nll: f64,
    ) {
        let (cl, rl) = (pc - refs.0 as f64, pr - refs.1 as f64);
        let b = self.cfg.beta as f64;
        let loss = pair_loss(&self.cfg, cl, rl, p.chosen.len(), p.rejected.len())
            + self.cfg.rpo_alpha as f64 * nll;
        m.add("loss", loss, 1.0);
        m.add("rewards/chosen", b * cl, 1.0);
        m.add("rewards/rejected", b * rl, 1.0);
        m.add("rewards/accuracies", (cl > rl) as u8 as f64, 1.0);
        m.add("rewards/margins", b * (cl - rl), 1.0);
        m.add("logps/chosen", pc, 1.0);
        m.add("logps/rejected", pr, 1.0);
        if self.cfg.rpo_alpha > 0.0 {
            m.add("nll_loss", nll, 1.0);
        }
    }
}

/// RPO's NLL of a batch: the mean over all its chosen tokens, `−Σ pc / Σ |y+|`.
fn batch_nll(pcs: &[f64], pairs: &[&PreferencePair]) -> f64 {
    let tokens: usize = pairs.iter().map(|p| p.chosen.len().max(1)).sum();
    -pcs.iter().sum::<f64>() / tokens.max(1) as f64
}

impl<D: Dev> Stage<D> for DpoStage {
    type Model = Llama<D>;

    fn name(&self) -> &'static str {
        "dpo"
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn micro_step(
        &mut self,
        model: &Llama<D>,
        examples: &[usize],
        scale: f32,
    ) -> Result<(ParamTensors<D>, Metrics)> {
        let k = examples.len();
        let seqs: Vec<(Sequence, Sequence)> = examples
            .iter()
            .map(|&i| self.pairs[i].sequences())
            .collect();
        // chosen rows first, then rejected rows, in one forward
        let rows: Vec<&Sequence> = seqs
            .iter()
            .map(|s| &s.0)
            .chain(seqs.iter().map(|s| &s.1))
            .collect();
        let pad = model.cfg.pad_token_id.unwrap_or(0);
        let tb = TargetBatch::new(&rows, pad)?;
        let lp = token_logprobs(
            model,
            model.embed_tokens.trace(Gradients::leaky()),
            &tb,
            1.0,
        )?;
        let sums = masked_row_sums(model, lp, &tb);
        let values = sums.as_vec();
        let dev = &model.dev;
        let pc = sums
            .with_empty_tape()
            .gather(dev.tensor_from_vec((0..k).collect::<Vec<_>>(), (k,)));
        let pr = sums.gather(dev.tensor_from_vec((k..2 * k).collect::<Vec<_>>(), (k,)));
        let refc = dev.tensor_from_vec(
            examples
                .iter()
                .map(|&i| self.reference[i].0)
                .collect::<Vec<_>>(),
            (k,),
        );
        let refr = dev.tensor_from_vec(
            examples
                .iter()
                .map(|&i| self.reference[i].1)
                .collect::<Vec<_>>(),
            (k,),
        );
        let inv_len_c = dev.tensor_from_vec(
            examples
                .iter()
                .map(|&i| 1.0 / self.pairs[i].chosen.len().max(1) as f32)
                .collect::<Vec<_>>(),
            (k,),
        );
        let inv_len_r = dev.tensor_from_vec(
            examples
                .iter()
                .map(|&i| 1.0 / self.pairs[i].rejected.len().max(1) as f32)
                .collect::<Vec<_>>(),
            (k,),
        );
        let per_pair = loss_tensor(&self.cfg, pc, pr, &refc, &refr, &inv_len_c, &inv_len_r);
        let loss = per_pair.sum::<Rank0, _>() * scale;
        let mut grads = loss.backward();
        let g = ParamTensors::from_backward(model, &mut grads)?;
        let mut m = Metrics::default();
        let pcs: Vec<f64> = values[..k].iter().map(|&v| v as f64).collect();
        let batch: Vec<&PreferencePair> = examples.iter().map(|&i| &self.pairs[i]).collect();
        let nll = batch_nll(&pcs, &batch);
        for (j, &i) in examples.iter().enumerate() {
            self.pair_metrics(
                &mut m,
                values[j] as f64,
                values[k + j] as f64,
                self.reference[i],
                &self.pairs[i],
                nll,
            );
        }
        Ok((g, m))
    }

    fn evaluate(&mut self, model: &Llama<D>) -> Result<Option<Metrics>> {
        if self.eval_pairs.is_empty() {
            return Ok(None);
        }
        let lp = pair_logprobs(model, &self.eval_pairs, self.eval_batch)?;
        let mut m = Metrics::default();
        let pcs: Vec<f64> = lp.iter().map(|&(c, _)| c as f64).collect();
        let nll = batch_nll(&pcs, &self.eval_pairs.iter().collect::<Vec<_>>());
        for (i, &(c, r)) in lp.iter().enumerate() {
            self.pair_metrics(
                &mut m,
                c as f64,
                r as f64,
                self.eval_reference[i],
                &self.eval_pairs[i],
                nll,
            );
        }
        Ok(Some(m))
    }

    fn write_model(&self, model: &Llama<D>, dir: &Path, dtype: DType) -> Result<()> {
        self.files.write_into(model, dir, dtype)
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self.cfg).unwrap_or_default()
    }

    fn fingerprint(&self) -> String {
        let mut f = Fingerprint::default();
        for (p, r) in self.pairs.iter().zip(&self.reference) {
            f.feed_tokens(&p.prompt);
            f.feed_tokens(&p.chosen);
            f.feed_tokens(&p.rejected);
            f.feed(r.0.to_bits() as u64);
            f.feed(r.1.to_bits() as u64);
        }
        f.hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // DESIGN §7: β = 0.1, logπθ(y+) = −10, logπθ(y−) = −12, logπref(y+) = −11, logπref(y−) = −11.5.
    const CL: f64 = -10.0 + 11.0;
    const RL: f64 = -12.0 + 11.5;

    #[test]
    fn golden_values_from_design() {
        let sig = DpoConfig::default();
        assert!(
            (pair_loss(&sig, CL, RL, 5, 4) - 0.620957).abs() < 1e-6,
            "{}",
            pair_loss(&sig, CL, RL, 5, 4)
        );
        let robust = DpoConfig {
            loss: DpoLoss::Robust,
            label_smoothing: 0.1,
            ..sig
        };
        assert!(
            (pair_loss(&robust, CL, RL, 5, 4) - 0.602207).abs() < 1e-6,
            "{}",
            pair_loss(&robust, CL, RL, 5, 4)
        );
        let ipo = DpoConfig {
            loss: DpoLoss::Ipo,
            ..sig
        };
        assert!(
            (pair_loss(&ipo, CL, RL, 5, 4) - 21.855625).abs() < 1e-6,
            "{}",
            pair_loss(&ipo, CL, RL, 5, 4)
        );
        // implicit rewards β·cl and β·rl
        assert!((0.1 * CL - 0.1).abs() < 1e-12 && (0.1 * RL + 0.05).abs() < 1e-12);
        // cDPO: −0.9·log σ(0.15) − 0.1·log σ(−0.15)
        let cdpo = DpoConfig {
            label_smoothing: 0.1,
            ..sig
        };
        let want = 0.9 * softplus_f64(-0.15) + 0.1 * softplus_f64(0.15);
        assert!((pair_loss(&cdpo, CL, RL, 5, 4) - want).abs() < 1e-7);
    }

    #[test]
    fn tensor_loss_matches_the_formulas_and_its_gradient() {
        let dev = Cpu::default();
        let t = |x: f32| dev.tensor_from_vec(vec![x], (1,));
        for cfg in [
            DpoConfig::default(),
            DpoConfig {
                loss: DpoLoss::Robust,
                label_smoothing: 0.1,
                ..DpoConfig::default()
            },
            DpoConfig {
                label_smoothing: 0.2,
                ..DpoConfig::default()
            },
            DpoConfig {
                loss: DpoLoss::Ipo,
                ..DpoConfig::default()
            },
        ] {
            let value = |pc: f32| {
                let l = loss_tensor(
                    &cfg,
                    t(pc),
                    t(-12.0),
                    &t(-11.0),
                    &t(-11.5),
                    &t(0.2),
                    &t(0.25),
                );
                l.as_vec()[0] as f64
            };
            assert!(
                (value(-10.0) - pair_loss(&cfg, CL, RL, 5, 4)).abs() < 1e-5,
                "{cfg:?}"
            );
            // autodiff against a central difference in logπθ(y+)
            let pc = t(-10.0);
            let l = loss_tensor(
                &cfg,
                pc.trace(Gradients::leaky()),
                t(-12.0).trace(Gradients::leaky()),
                &t(-11.0),
                &t(-11.5),
                &t(0.2),
                &t(0.25),
            );
            let g = l.sum::<Rank0, _>().backward().get(&pc).as_vec()[0] as f64;
            let h = 1e-2;
            let fd = (value(-10.0 + h as f32) - value(-10.0 - h as f32)) / (2.0 * h);
            assert!(
                (g - fd).abs() < 1e-3 * fd.abs().max(1.0),
                "{cfg:?}: {g} vs {fd}"
            );
        }
        // RPO adds α·NLL per token of the chosen response: 0.2 · 10/5
        let rpo = DpoConfig {
            rpo_alpha: 0.2,
            ..DpoConfig::default()
        };
        let l = loss_tensor(
            &rpo,
            t(-10.0),
            t(-12.0),
            &t(-11.0),
            &t(-11.5),
            &t(0.2),
            &t(0.25),
        )
        .as_vec()[0] as f64;
        assert!((l - (0.620957 + 0.4)).abs() < 1e-5, "{l}");
        // Two pairs: TRL's NLL is over all chosen tokens, (10 + 3) / (5 + 3),
        // not the mean of per-sequence means (2 + 1) / 2.
        let v = |xs: &[f32]| dev.tensor_from_vec(xs.to_vec(), (xs.len(),));
        let l = loss_tensor(
            &rpo,
            v(&[-10.0, -3.0]),
            v(&[-12.0, -4.0]),
            &v(&[-11.0, -3.0]),
            &v(&[-11.5, -4.0]),
            &v(&[0.2, 1.0 / 3.0]),
            &v(&[0.25, 0.5]),
        )
        .sum::<Rank0, _>()
        .array() as f64;
        let dpo = pair_loss(&rpo, CL, RL, 5, 4) + pair_loss(&rpo, 0.0, 0.0, 3, 2);
        assert!((l - (dpo + 2.0 * 0.2 * 13.0 / 8.0)).abs() < 1e-5, "{l}");
        assert!((batch_nll(&[-10.0, -3.0], &[&pair(5), &pair(3)]) - 13.0 / 8.0).abs() < 1e-12);
    }

    fn pair(chosen: usize) -> PreferencePair {
        PreferencePair {
            prompt: vec![1],
            chosen: vec![2; chosen],
            rejected: vec![3],
        }
    }

    #[test]
    fn first_step_from_the_reference_has_the_sigmoid_gradient() {
        // policy == reference: Δ = 0 and d loss / d logπθ(y+) = −β·σ(0) = −β/2
        // (−(1−ε)β/2 + εβ/2 with label smoothing), for every sigmoid-family loss.
        let dev = Cpu::default();
        let t = |x: f32| dev.tensor_from_vec(vec![x], (1,));
        for (cfg, want) in [
            (DpoConfig::default(), -0.05),
            (
                DpoConfig {
                    label_smoothing: 0.2,
                    ..DpoConfig::default()
                },
                -0.8 * 0.05 + 0.2 * 0.05,
            ),
            (
                DpoConfig {
                    loss: DpoLoss::Robust,
                    label_smoothing: 0.2,
                    ..DpoConfig::default()
                },
                (-0.8 * 0.05 - 0.2 * 0.05) / 0.6,
            ),
        ] {
            let pc = t(-11.0);
            let l = loss_tensor(
                &cfg,
                pc.leaky_trace(),
                t(-11.5).leaky_trace(),
                &t(-11.0),
                &t(-11.5),
                &t(0.2),
                &t(0.25),
            );
            let g = l.sum::<Rank0, _>().backward().get(&pc).as_vec()[0];
            assert!((g - want).abs() < 1e-7, "{cfg:?}: {g} vs {want}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(DpoConfig {
            beta: 0.0,
            ..DpoConfig::default()
        }
        .validate()
        .is_err());
        assert!(DpoConfig {
            label_smoothing: 0.5,
            ..DpoConfig::default()
        }
        .validate()
        .is_err());
        assert!(DpoConfig {
            loss: DpoLoss::Ipo,
            label_smoothing: 0.1,
            ..DpoConfig::default()
        }
        .validate()
        .is_err());
        assert!(DpoConfig {
            rpo_alpha: -1.0,
            ..DpoConfig::default()
        }
        .validate()
        .is_err());
    }
}
