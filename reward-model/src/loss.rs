//! Pairwise reward-model losses (DESIGN §7): Bradley–Terry
//! `−log σ(r_c − r_r − m)` with Llama-2's margin from the labeled preference
//! strength, plus the optional reward-centering term `c·mean((r_c + r_r)²)`.
use anyhow::{bail, Result};
use dfdx::prelude::*;
use policy::model::{Dev, T1};
use policy::train::{softplus, softplus_f64};
use serde::{Deserialize, Serialize};

/// How much better the preferred response is (Llama-2's four levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// Negligibly better, or unsure.
    NegligiblyBetter,
    /// Slightly better.
    SlightlyBetter,
    /// Better.
    Better,
    /// Significantly better.
    SignificantlyBetter,
}

impl Strength {
    /// All levels, weakest first.
    pub const ALL: [Strength; 4] = [
        Strength::NegligiblyBetter,
        Strength::SlightlyBetter,
        Strength::Better,
        Strength::SignificantlyBetter,
    ];

    /// The annotation server's name (`significantly_better`, `better`,
    /// `slightly_better`, `negligibly_better`).
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::SignificantlyBetter => "significantly_better",
            Strength::Better => "better",
            Strength::SlightlyBetter => "slightly_better",
            Strength::NegligiblyBetter => "negligibly_better",
        }
    }

    /// Parses a name (also `unsure`, spaces or dashes for underscores) or a
    /// level 0..=3 (0 = negligibly better).
    pub fn parse(s: &str) -> Result<Strength> {
        let norm = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Ok(match norm.as_str() {
            "significantly_better" | "3" => Strength::SignificantlyBetter,
            "better" | "2" => Strength::Better,
            "slightly_better" | "1" => Strength::SlightlyBetter,
            "negligibly_better" | "unsure" | "0" => Strength::NegligiblyBetter,
            _ => bail!("unknown preference strength {s:?} (expected significantly_better, better, slightly_better, negligibly_better/unsure or 0..3)"),
        })
    }
}

/// Margin per strength level. Llama-2 "large" is 3/2/1/0; "small" is
/// 1, 2/3, 1/3, 0; Llama-3 dropped the margin (all zero).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginTable {
    pub significantly_better: f32,
    pub better: f32,
    pub slightly_better: f32,
    pub negligibly_better: f32,
}

impl Default for MarginTable {
    fn default() -> Self {
        Self::llama2_large()
    }
}

impl MarginTable {
    /// Llama-2's "large" margins (3, 2, 1, 0): DESIGN §7's default.
    pub fn llama2_large() -> Self {
        MarginTable {
            significantly_better: 3.0,
            better: 2.0,
            slightly_better: 1.0,
            negligibly_better: 0.0,
        }
    }

    /// Llama-2's "small" margins (1, 2/3, 1/3, 0).
    pub fn llama2_small() -> Self {
        MarginTable {
            significantly_better: 1.0,
            better: 2.0 / 3.0,
            slightly_better: 1.0 / 3.0,
            negligibly_better: 0.0,
        }
    }

    /// No margin (Llama-3).
    pub fn off() -> Self {
        MarginTable {
            significantly_better: 0.0,
            better: 0.0,
            slightly_better: 0.0,
            negligibly_better: 0.0,
        }
    }

    /// Parses `large`, `small`, `off`, or four comma-separated numbers
    /// (significantly better, better, slightly better, negligibly better).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "large" | "llama2" | "llama2-large" => return Ok(Self::llama2_large()),
            "small" | "llama2-small" => return Ok(Self::llama2_small()),
            "off" | "none" | "0" => return Ok(Self::off()),
            _ => {}
        }
        let v: Vec<f32> = s
            .split(',')
            .map(|x| x.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "margin table {s:?}: expected large, small, off, or four numbers like 3,2,1,0"
                )
            })?;
        if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
            bail!("margin table {s:?}: expected four finite numbers (significantly better, better, slightly better, negligibly better)");
        }
        Ok(MarginTable {
            significantly_better: v[0],
            better: v[1],
            slightly_better: v[2],
            negligibly_better: v[3],
        })
    }

    /// Whether every margin is zero.
    pub fn is_off(&self) -> bool {
        *self == Self::off()
    }

    /// The margin for a strength level.
    pub fn margin(&self, s: Strength) -> f32 {
        match s {
            Strength::SignificantlyBetter => self.significantly_better,
            Strength::Better => self.better,
            Strength::SlightlyBetter => self.slightly_better,
            Strength::NegligiblyBetter => self.negligibly_better,
        }
    }
}

/// Bradley–Terry loss of one pair, `−log σ(r_c − r_r − m) = softplus(−(r_c − r_r − m))`.
pub fn bt_loss(r_chosen: f64, r_rejected: f64, margin: f64) -> f64 {
    softplus_f64(-(r_chosen - r_rejected - margin))
}

/// Full loss on host values: mean BT loss plus `centering · mean((r_c + r_r)²)`.
pub fn pairwise_loss(
    chosen: &[f64],
    rejected: &[f64],
    margins: &[f64],
    centering: f64,
) -> Result<f64> {
    if chosen.len() != rejected.len() || chosen.len() != margins.len() || chosen.is_empty() {
        bail!("pairwise loss needs the same non-zero number of chosen rewards, rejected rewards and margins ({}, {}, {})", chosen.len(), rejected.len(), margins.len());
    }
    let n = chosen.len() as f64;
    let bt: f64 = chosen
        .iter()
        .zip(rejected)
        .zip(margins)
        .map(|((&c, &r), &m)| bt_loss(c, r, m))
        .sum::<f64>()
        / n;
    let center: f64 = chosen
        .iter()
        .zip(rejected)
        .map(|(&c, &r)| (c + r) * (c + r))
        .sum::<f64>()
        / n;
    Ok(bt + centering * center)
}

/// The loss on device tensors, differentiable: `scale · Σ_i [softplus(−(r_c − r_r − m)) + c·(r_c + r_r)²]`.
///
/// `scale` is `1 / pairs in the optimizer batch`, so summing the gradients of
/// micro-batches gives the gradient of the batch mean.
pub fn pairwise_loss_tensor<D: Dev, T: Tape<f32, D> + Merge<NoneTape> + Merge<T>>(
    chosen: T1<D, T>,
    rejected: T1<D, T>,
    margins: &T1<D>,
    centering: f32,
    scale: f32,
) -> Tensor<(), f32, D, T> {
    // Both inputs may share one tape (one forward over chosen and rejected
    // rows): ops on empty-tape copies are merged back at the end.
    let diff = chosen.with_empty_tape() - rejected.with_empty_tape() - margins.clone();
    let x = -diff; // softplus(x), x = −(r_c − r_r − m)
    let sp = softplus(x);
    let center = (chosen + rejected).square().sum::<Rank0, _>() * centering;
    (sp.sum::<Rank0, _>() + center) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values_from_design() {
        // DESIGN §7: r_c = 1.2, r_r = 0.3 → 0.341154; with margin 0.5 → 0.513015.
        assert!(
            (bt_loss(1.2, 0.3, 0.0) - 0.341154).abs() < 1e-6,
            "{}",
            bt_loss(1.2, 0.3, 0.0)
        );
        assert!(
            (bt_loss(1.2, 0.3, 0.5) - 0.513015).abs() < 1e-6,
            "{}",
            bt_loss(1.2, 0.3, 0.5)
        );
    }

    #[test]
    fn stable_for_large_differences() {
        assert_eq!(bt_loss(1000.0, 0.0, 0.0), 0.0);
        assert!((bt_loss(0.0, 1000.0, 0.0) - 1000.0).abs() < 1e-9);
        assert!(bt_loss(-1e6, 1e6, 3.0).is_finite());
    }

    #[test]
    fn centering_term() {
        // c·mean((r_c + r_r)²) = 0.01 · 1.5² for one pair.
        let l = pairwise_loss(&[1.2], &[0.3], &[0.0], 0.01).unwrap();
        assert!((l - (0.341154 + 0.01 * 2.25)).abs() < 1e-6);
        assert!(pairwise_loss(&[1.0], &[], &[], 0.0).is_err());
    }

    #[test]
    fn tensor_loss_matches_host_and_has_the_right_gradient() {
        let dev = Cpu::default();
        let rc = dev.tensor_from_vec(vec![1.2f32, -0.4, 30.0], (3,));
        let rr = dev.tensor_from_vec(vec![0.3f32, 0.9, -30.0], (3,));
        let m = dev.tensor_from_vec(vec![0.0f32, 0.5, 2.0], (3,));
        let want = pairwise_loss(
            &[1.2, -0.4, 30.0],
            &[0.3, 0.9, -30.0],
            &[0.0, 0.5, 2.0],
            0.01,
        )
        .unwrap();
        let g = Gradients::leaky();
        let loss = pairwise_loss_tensor(
            rc.trace(g),
            rr.trace(Gradients::leaky()),
            &m,
            0.01,
            1.0 / 3.0,
        );
        assert!(
            (loss.array() as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            loss.array()
        );
        let grads = loss.backward();
        // d/dr_c of softplus(−(r_c − r_r − m))/n + c(r_c + r_r)²/n = (−σ(−d) + 2c(r_c + r_r))/n
        let gc = grads.get(&rc).as_vec();
        for (i, (c, r, mm)) in [(1.2f64, 0.3, 0.0), (-0.4, 0.9, 0.5), (30.0, -30.0, 2.0)]
            .into_iter()
            .enumerate()
        {
            let d = c - r - mm;
            let want = (-1.0 / (1.0 + d.exp()) + 0.02 * (c + r)) / 3.0;
            assert!(
                (gc[i] as f64 - want).abs() < 1e-5,
                "grad {i}: {} vs {want}",
                gc[i]
            );
        }
    }

    #[test]
    fn gradient_at_a_tie_is_one_half() {
        // A fresh head on two identical responses gives r_c = r_r: −log σ(0)
        // has slope −½ in r_c, not the 0 a relu/abs composition gives.
        let dev = Cpu::default();
        let rc = dev.tensor_from_vec(vec![0.7f32], (1,));
        let rr = dev.tensor_from_vec(vec![0.7f32], (1,));
        let m = dev.tensor_from_vec(vec![0.0f32], (1,));
        let loss = pairwise_loss_tensor(rc.leaky_trace(), rr.leaky_trace(), &m, 0.0, 1.0);
        let g = loss.backward().get(&rc).as_vec();
        assert_eq!(g, vec![-0.5]);
    }

    #[test]
    fn strengths_and_tables_parse() {
        assert_eq!(
            Strength::parse("Significantly better").unwrap(),
            Strength::SignificantlyBetter
        );
        assert_eq!(
            Strength::parse("unsure").unwrap(),
            Strength::NegligiblyBetter
        );
        assert_eq!(Strength::parse("2").unwrap(), Strength::Better);
        assert!(Strength::parse("much").is_err());
        assert_eq!(
            MarginTable::parse("large")
                .unwrap()
                .margin(Strength::Better),
            2.0
        );
        assert!(MarginTable::parse("off").unwrap().is_off());
        assert_eq!(
            MarginTable::parse("4, 2, 1, 0")
                .unwrap()
                .significantly_better,
            4.0
        );
        assert!(MarginTable::parse("1,2").is_err());
    }
}
