//! Reward functions the trainer calls, including Llama-2's combination of a
//! safety and a helpfulness reward model (DESIGN §7):
//! `R = R_safety if the prompt is unsafe or R_safety < 0.15 else R_help`,
//! then `whiten(logit(R))`.
//!
//! The 0.15 threshold is on a probability, so each model's reward `x` is read
//! as `σ(x)` (a BT reward is a log-odds); `logit(σ(x)) = x`, so the logit step
//! is the selected reward itself, computed exactly rather than through a
//! saturating σ. `x` is the model's normalized reward (mean 0 / std 1 on its
//! reference set; an identity normalization gives the raw score).
//!
//! A deliberate difference from the paper: Llama-2 compares the safety
//! model's own score with 0.15; we compare σ of its *normalized* reward. A
//! BT model's raw score has an arbitrary offset that moves each time it is
//! retrained (the loss only sees differences), so a fixed threshold on it
//! would mean something different every round; after normalization,
//! σ(x) < 0.15 means "about one std below the reference set's mean"
//! (x < −1.73) whatever the round. Set the normalization to the identity
//! to get the paper's rule on the raw score.
use crate::model::RewardModel;
use anyhow::{bail, Result};
use policy::model::Dev;

/// One sample to reward: prompt + response token ids, and whether the prompt
/// is tagged unsafe (e.g. by the annotation server's safety tags).
#[derive(Clone, Debug, PartialEq)]
pub struct RewardInput {
    pub tokens: Vec<u32>,
    pub unsafe_prompt: bool,
}

/// Anything that turns samples into scalar rewards, batched.
pub trait RewardFunction {
    /// One reward per input, in order.
    fn rewards(&self, inputs: &[RewardInput]) -> Result<Vec<f32>>;
}

/// A single reward model: its normalized reward (prompt tags ignored).
pub struct SingleReward<D: Dev> {
    pub model: RewardModel<D>,
    /// Rows per forward pass.
    pub batch_size: usize,
}

impl<D: Dev> RewardFunction for SingleReward<D> {
    fn rewards(&self, inputs: &[RewardInput]) -> Result<Vec<f32>> {
        let seqs: Vec<Vec<u32>> = inputs.iter().map(|i| i.tokens.clone()).collect();
        self.model.rewards(&seqs, self.batch_size)
    }
}

/// Which model's reward was used for a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Safety,
    Helpfulness,
}

/// `σ(x)` without overflow.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Llama-2's selection on rewards `x` (log-odds): the safety reward where the
/// prompt is unsafe or `σ(x_safety) < threshold`, else the helpfulness reward.
/// Returns `logit(σ(x))` of the chosen reward (= the reward) and its source.
pub fn select(
    safety: &[f32],
    helpfulness: &[f32],
    unsafe_prompt: &[bool],
    threshold: f32,
) -> Result<Vec<(f32, Source)>> {
    if safety.len() != helpfulness.len() || safety.len() != unsafe_prompt.len() {
        bail!(
            "safety ({}), helpfulness ({}) and prompt tags ({}) differ in length",
            safety.len(),
            helpfulness.len(),
            unsafe_prompt.len()
        );
    }
    if !(0.0..=1.0).contains(&threshold) {
        bail!("the safety threshold is a probability in [0, 1], got {threshold}");
    }
    Ok(safety
        .iter()
        .zip(helpfulness)
        .zip(unsafe_prompt)
        .map(|((&s, &h), &u)| {
            if u || sigmoid(s) < threshold {
                (s, Source::Safety)
            } else {
                (h, Source::Helpfulness)
            }
        })
        .collect())
}

/// `(x − mean) / std` over the batch (population std; a constant batch maps to 0).
pub fn whiten(xs: &[f32]) -> Vec<f32> {
    if xs.is_empty() {
        return vec![];
    }
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt().max(1e-8);
    xs.iter()
        .map(|&x| ((x as f64 - mean) / std) as f32)
        .collect()
}

/// Llama-2's safety + helpfulness reward.
pub struct SafetyHelpfulness<D: Dev> {
    pub safety: RewardModel<D>,
    pub helpfulness: RewardModel<D>,
    /// Llama-2: 0.15.
    pub threshold: f32,
    /// Whiten the combined rewards over each batch (Llama-2 does).
    pub whiten: bool,
    /// Rows per forward pass.
    pub batch_size: usize,
}

impl<D: Dev> SafetyHelpfulness<D> {
    /// Llama-2's settings (threshold 0.15, whitening on). Both models must
    /// share a tokenizer: they score the same token ids.
    pub fn new(safety: RewardModel<D>, helpfulness: RewardModel<D>) -> Result<Self> {
        if safety.backbone.cfg.vocab_size != helpfulness.backbone.cfg.vocab_size {
            bail!(
                "the safety and helpfulness models have different vocabularies ({} vs {}); they must share a tokenizer",
                safety.backbone.cfg.vocab_size,
                helpfulness.backbone.cfg.vocab_size
            );
        }
        Ok(SafetyHelpfulness {
            safety,
            helpfulness,
            threshold: 0.15,
            whiten: true,
            batch_size: 16,
        })
    }

    /// Combined rewards with both models' rewards and which one was used.
    pub fn score(&self, inputs: &[RewardInput]) -> Result<Vec<Combined>> {
        let seqs: Vec<Vec<u32>> = inputs.iter().map(|i| i.tokens.clone()).collect();
        let s = self.safety.rewards(&seqs, self.batch_size)?;
        let h = self.helpfulness.rewards(&seqs, self.batch_size)?;
        let tags: Vec<bool> = inputs.iter().map(|i| i.unsafe_prompt).collect();
        let sel = select(&s, &h, &tags, self.threshold)?;
        let picked: Vec<f32> = sel.iter().map(|x| x.0).collect();
        let rewards = if self.whiten { whiten(&picked) } else { picked };
        Ok((0..inputs.len())
            .map(|i| Combined {
                reward: rewards[i],
                source: sel[i].1,
                safety: s[i],
                helpfulness: h[i],
            })
            .collect())
    }

    /// Combined rewards and which model each came from.
    pub fn rewards_with_source(&self, inputs: &[RewardInput]) -> Result<Vec<(f32, Source)>> {
        Ok(self
            .score(inputs)?
            .into_iter()
            .map(|c| (c.reward, c.source))
            .collect())
    }
}

/// One combined reward with its parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Combined {
    /// `whiten(logit(R))` (or `logit(R)` without whitening).
    pub reward: f32,
    pub source: Source,
    /// The safety model's normalized reward.
    pub safety: f32,
    /// The helpfulness model's normalized reward.
    pub helpfulness: f32,
}

impl<D: Dev> RewardFunction for SafetyHelpfulness<D> {
    fn rewards(&self, inputs: &[RewardInput]) -> Result<Vec<f32>> {
        Ok(self
            .rewards_with_source(inputs)?
            .into_iter()
            .map(|x| x.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_selection_rule() {
        // σ(−3) = 0.047 < 0.15 → safety; σ(0.5) = 0.62 → helpfulness; unsafe prompt → safety;
        // σ(−1.7) = 0.154 ≥ 0.15 → helpfulness; σ(−1.8) = 0.142 → safety.
        let s = [-3.0, 0.5, 2.0, -1.7, -1.8];
        let h = [1.0, 2.0, -1.0, 0.3, 5.0];
        let u = [false, false, true, false, false];
        let got = select(&s, &h, &u, 0.15).unwrap();
        use Source::*;
        assert_eq!(
            got,
            vec![
                (-3.0, Safety),
                (2.0, Helpfulness),
                (2.0, Safety),
                (0.3, Helpfulness),
                (-1.8, Safety)
            ]
        );
        assert!(select(&s, &h[..2], &u, 0.15).is_err());
        assert!(select(&s, &h, &u, 1.5).is_err());
    }

    #[test]
    fn whitening() {
        let w = whiten(&[-3.0, 2.0, 2.0, 0.3, -1.8]);
        let mean: f32 = w.iter().sum::<f32>() / 5.0;
        let var: f32 = w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 5.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        // hand-computed: mean −0.1, std 2.013951
        assert!((w[0] - (-2.9 / 2.013951)).abs() < 1e-4, "{w:?}");
        assert_eq!(whiten(&[1.0, 1.0]), vec![0.0, 0.0]);
        assert!(whiten(&[]).is_empty());
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
