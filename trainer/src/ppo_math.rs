//! PPO's per-token arithmetic on host values (DESIGN §7): KL estimators, the
//! per-token reward with the score at the last response token, GAE,
//! whitening, and the adaptive KL controller. Rows are variable-length
//! responses; everything here is over the real tokens of each row.
use serde::{Deserialize, Serialize};

/// Which per-token KL estimator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `logπ − logπref` (unbiased, can be negative; TRL's default).
    #[default]
    K1,
    /// `e^r − 1 − r` with `r = logπref − logπ` (unbiased, never negative, lower variance).
    K3,
}

/// Per-token KL estimate from the policy's and the reference's log-probs.
pub fn kl(est: KlEstimator, logp: f32, ref_logp: f32) -> f32 {
    match est {
        KlEstimator::K1 => logp - ref_logp,
        KlEstimator::K3 => {
            let r = ref_logp - logp;
            r.exp() - 1.0 - r
        }
    }
}

/// Per-token rewards of one row: `−β·kl_t`, plus `score` at the last token.
pub fn token_rewards(kls: &[f32], beta: f32, score: f32) -> Vec<f32> {
    let mut r: Vec<f32> = kls.iter().map(|&k| -beta * k).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Whether PPO's clipped objective is the one that applies at a token with
/// advantage `adv` and ratio `rho = π/π_old` (TRL's `clipfrac`: the clipped
/// loss `−A·clip(ρ, 1−ε, 1+ε)` exceeds the unclipped `−A·ρ`). Unlike
/// `|ρ − 1| > ε`, a ratio outside the range counts only when clipping removes
/// the incentive: ρ > 1+ε with A > 0, or ρ < 1−ε with A < 0.
pub fn clipped(adv: f64, rho: f64, eps: f64) -> bool {
    -adv * rho.clamp(1.0 - eps, 1.0 + eps) > -adv * rho
}

/// Generalized advantage estimation over one row (the value after the last
/// token is 0: the episode ends). Returns the advantages; returns = A + V.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> Vec<f32> {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let mut adv = vec![0f32; rewards.len()];
    let mut last = 0f32;
    for t in (0..rewards.len()).rev() {
        let next_v = if t + 1 < values.len() {
            values[t + 1]
        } else {
            0.0
        };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lambda * last;
        adv[t] = last;
    }
    adv
}

/// Whitens all values of all rows together: `(x − mean)/std`, adding the mean
/// back when `shift_mean` is false (as TRL's reward whitening). Rows of one
/// value or fewer in total are returned unchanged.
pub fn whiten_rows(rows: &mut [Vec<f32>], shift_mean: bool) {
    let n: usize = rows.iter().map(Vec::len).sum();
    if n < 2 {
        return;
    }
    let mean = rows.iter().flatten().map(|&x| x as f64).sum::<f64>() / n as f64;
    // unbiased variance, as torch.var in TRL's masked_whiten
    let var = rows
        .iter()
        .flatten()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for x in rows.iter_mut().flatten() {
        let w = (*x as f64 - mean) * inv;
        *x = if shift_mean { w } else { w + mean } as f32;
    }
}

/// The KL coefficient β: fixed, or adapted towards a target KL (Ziegler et al.).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct KlController {
    pub beta: f32,
    /// `Some((target, horizon))`: adaptive.
    pub adaptive: Option<(f32, f32)>,
}

impl KlController {
    /// `β ← β·(1 + clip(kl/target − 1, −0.2, 0.2)·n/horizon)` after a batch of
    /// `n` episodes whose mean KL is `kl`; a fixed controller keeps β.
    pub fn update(&mut self, kl: f32, n: usize) {
        if let Some((target, horizon)) = self.adaptive {
            let err = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.beta *= 1.0 + err * n as f32 / horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clipfrac_counts_where_the_clipped_objective_applies() {
        // ε 0.2: outside the range with the advantage pushing further out → clipped
        assert!(clipped(1.0, 1.3, 0.2) && clipped(-1.0, 0.7, 0.2));
        // outside the range but the advantage pulls back in: the unclipped term applies
        assert!(!clipped(-1.0, 1.3, 0.2) && !clipped(1.0, 0.7, 0.2));
        // inside the range, at the edges, and with no advantage: never
        assert!(!clipped(1.0, 1.1, 0.2) && !clipped(1.0, 1.2, 0.2) && !clipped(0.0, 2.0, 0.2));
    }

    use super::*;

    #[test]
    fn gae_golden_values_from_design() {
        let a = gae(&[-0.01, 0.02, -0.03, 1.5], &[0.5, 0.6, 0.7, 0.8], 1.0, 0.95);
        for (got, want) in a.iter().zip([0.867337, 0.81825, 0.735, 0.7]) {
            assert!((*got as f64 - want).abs() < 1e-5, "{a:?}");
        }
    }

    #[test]
    fn adaptive_kl_golden_value_from_design() {
        let mut c = KlController {
            beta: 0.2,
            adaptive: Some((6.0, 10000.0)),
        };
        c.update(8.0, 256);
        assert!((c.beta as f64 - 0.201024).abs() < 1e-6, "{}", c.beta);
        let mut fixed = KlController {
            beta: 0.2,
            adaptive: None,
        };
        fixed.update(8.0, 256);
        assert_eq!(fixed.beta, 0.2);
        // below target: β shrinks, clipped at −20%
        let mut low = KlController {
            beta: 0.2,
            adaptive: Some((6.0, 256.0)),
        };
        low.update(0.0, 256);
        assert!((low.beta - 0.16).abs() < 1e-6);
    }

    #[test]
    fn kl_estimators() {
        assert!((kl(KlEstimator::K1, -1.0, -1.5) - 0.5).abs() < 1e-7);
        // k3 with r = −0.5: e^−0.5 − 1 + 0.5
        assert!((kl(KlEstimator::K3, -1.0, -1.5) - ((-0.5f32).exp() - 0.5)).abs() < 1e-7);
        assert!(kl(KlEstimator::K3, -3.0, -0.1) >= 0.0);
        assert_eq!(kl(KlEstimator::K3, -2.0, -2.0), 0.0);
    }

    #[test]
    fn score_lands_on_the_last_token() {
        let r = token_rewards(&[0.1, -0.2, 0.3], 0.5, 2.0);
        assert_eq!(r, vec![-0.05, 0.1, -0.15 + 2.0]);
        assert!(token_rewards(&[], 0.5, 2.0).is_empty());
    }

    #[test]
    fn whitening() {
        let mut rows = vec![vec![1.0, 2.0], vec![3.0]];
        whiten_rows(&mut rows, true);
        let flat: Vec<f32> = rows.concat();
        assert!((flat.iter().sum::<f32>()).abs() < 1e-6);
        // unbiased std of the whitened values is 1
        let var: f32 = flat.iter().map(|x| x * x).sum::<f32>() / 2.0;
        assert!((var - 1.0).abs() < 1e-4, "{var}");
        let mut keep = vec![vec![1.0, 2.0, 3.0]];
        whiten_rows(&mut keep, false);
        assert!(
            (keep[0].iter().sum::<f32>() / 3.0 - 2.0).abs() < 1e-6,
            "mean kept"
        );
    }
}
