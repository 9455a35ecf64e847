//! Training primitives every stage shares: gradients per parameter,
//! accumulation over micro-batches, global-norm clipping, AdamW with
//! decoupled weight decay, and learning-rate schedules.
//!
//! dfdx's optimizers need compile-time shapes, so we own this loop; the
//! parameter list comes from [`HasParams`].
use crate::model::{Dev, Llama, ParamMut, ParamRef, T1, T2};
use crate::safetensors_io::HostTensor;
use anyhow::{bail, Result};
use dfdx::prelude::*;
use std::collections::BTreeMap;

/// Anything with an ordered list of named parameters (the policy, a reward
/// model, a value model).
pub trait HasParams<D: Dev> {
    /// Parameters with their names, in a fixed order.
    fn params(&self) -> Vec<(String, ParamRef<'_, D>)>;
    /// The same parameters, mutably, in the same order.
    fn params_mut(&mut self) -> Vec<ParamMut<'_, D>>;
}

impl<D: Dev> HasParams<D> for Llama<D> {
    fn params(&self) -> Vec<(String, ParamRef<'_, D>)> {
        Llama::params(self)
    }
    fn params_mut(&mut self) -> Vec<ParamMut<'_, D>> {
        Llama::params_mut(self)
    }
}

/// One tensor per parameter (gradients or optimizer moments), in parameter order.
#[derive(Clone, Debug)]
pub enum Slot<D: Dev> {
    Vector(T1<D>),
    Matrix(T2<D>),
}

impl<D: Dev> Slot<D> {
    fn zeros_like(p: &ParamRef<'_, D>) -> Self {
        match p {
            ParamRef::Vector(t) => Slot::Vector(t.device().zeros_like(t.shape())),
            ParamRef::Matrix(t) => Slot::Matrix(t.device().zeros_like(t.shape())),
        }
    }

    fn sum_squares(&self) -> f64 {
        match self {
            Slot::Vector(t) => t.clone().square().sum::<Rank0, _>().as_vec()[0] as f64,
            Slot::Matrix(t) => t.clone().square().sum::<Rank0, _>().as_vec()[0] as f64,
        }
    }

    fn scale(&mut self, c: f32) {
        match self {
            Slot::Vector(t) => *t = t.clone() * c,
            Slot::Matrix(t) => *t = t.clone() * c,
        }
    }

    fn add(&mut self, other: &Slot<D>) {
        match (self, other) {
            (Slot::Vector(a), Slot::Vector(b)) => *a = a.clone() + b.clone(),
            (Slot::Matrix(a), Slot::Matrix(b)) => *a = a.clone() + b.clone(),
            _ => unreachable!("slots follow the parameter order"),
        }
    }

    /// Copies to the host.
    pub fn to_host(&self) -> HostTensor {
        match self {
            Slot::Vector(t) => HostTensor {
                shape: vec![t.shape().0],
                data: t.as_vec(),
            },
            Slot::Matrix(t) => HostTensor {
                shape: vec![t.shape().0, t.shape().1],
                data: t.as_vec(),
            },
        }
    }
}

/// Gradients (or any per-parameter tensors) in parameter order.
#[derive(Clone, Debug)]
pub struct ParamTensors<D: Dev>(pub Vec<Slot<D>>);

impl<D: Dev> ParamTensors<D> {
    /// Zeros shaped like every parameter of `m`.
    pub fn zeros(m: &impl HasParams<D>) -> Self {
        ParamTensors(
            m.params()
                .iter()
                .map(|(_, p)| Slot::zeros_like(p))
                .collect(),
        )
    }

    /// Takes the parameters' gradients out of a backward pass (zeros for
    /// parameters the loss did not touch).
    pub fn from_backward(m: &impl HasParams<D>, grads: &mut Gradients<f32, D>) -> Result<Self> {
        let mut out = vec![];
        for (name, p) in m.params() {
            let slot = match p {
                ParamRef::Vector(t) => {
                    grads
                        .try_alloc_for(t)
                        .map_err(|e| anyhow::anyhow!("gradient of {name}: {e:?}"))?;
                    Slot::Vector(grads.get(t))
                }
                ParamRef::Matrix(t) => {
                    grads
                        .try_alloc_for(t)
                        .map_err(|e| anyhow::anyhow!("gradient of {name}: {e:?}"))?;
                    Slot::Matrix(grads.get(t))
                }
            };
            out.push(slot);
        }
        Ok(ParamTensors(out))
    }

    /// `self += other` (gradient accumulation).
    pub fn add(&mut self, other: &ParamTensors<D>) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.add(b);
        }
    }

    /// Multiplies every tensor by `c`.
    pub fn scale(&mut self, c: f32) {
        for s in &mut self.0 {
            s.scale(c);
        }
    }

    /// The global L2 norm over all tensors.
    pub fn global_norm(&self) -> f32 {
        self.0.iter().map(Slot::sum_squares).sum::<f64>().sqrt() as f32
    }

    /// Scales so the global norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f32) -> f32 {
        let norm = self.global_norm();
        if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
            self.scale(max_norm / (norm + 1e-6));
        }
        norm
    }

    /// Copies to host tensors keyed by the parameter names of `m`.
    pub fn to_host(&self, m: &impl HasParams<D>) -> BTreeMap<String, HostTensor> {
        m.params()
            .into_iter()
            .zip(&self.0)
            .map(|((n, _), s)| (n, s.to_host()))
            .collect()
    }

    /// Loads host tensors keyed by the parameter names of `m` (shapes checked).
    pub fn from_host(
        m: &impl HasParams<D>,
        dev: &D,
        mut host: BTreeMap<String, HostTensor>,
    ) -> Result<Self> {
        let mut out = vec![];
        for (name, p) in m.params() {
            let t = host
                .remove(&name)
                .ok_or_else(|| anyhow::anyhow!("missing tensor `{name}`"))?;
            let slot = match p {
                ParamRef::Vector(v) => {
                    if t.shape != [v.shape().0] {
                        bail!(
                            "tensor `{name}` has shape {:?}, expected [{}]",
                            t.shape,
                            v.shape().0
                        );
                    }
                    Slot::Vector(dev.tensor_from_vec(t.data, (v.shape().0,)))
                }
                ParamRef::Matrix(w) => {
                    let (r, c) = *w.shape();
                    if t.shape != [r, c] {
                        bail!(
                            "tensor `{name}` has shape {:?}, expected [{r}, {c}]",
                            t.shape
                        );
                    }
                    Slot::Matrix(dev.tensor_from_vec(t.data, (r, c)))
                }
            };
            out.push(slot);
        }
        Ok(ParamTensors(out))
    }
}

/// `ln(1 + e^x)` elementwise as one fused op (dfdx's BCE-with-logits
/// against a target of 0), so its derivative is σ(x) everywhere. A composition
/// such as `relu(x) + ln(1 + e^{−|x|})` has derivative 0 at x = 0 in dfdx
/// (relu′(0) = abs′(0) = 0), and DPO's default path starts exactly there.
pub fn softplus<S: Shape, D: Dev, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    let zeros = x.device().zeros_like(&x);
    x.bce_with_logits(zeros)
}

/// `ln(1 + e^x)` on the host, without overflow.
pub fn softplus_f64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// AdamW hyper-parameters (defaults: Llama-2's β1 0.9, β2 0.95, eps 1e-5, wd 0.1).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
        }
    }
}

/// AdamW state: moments per parameter and the step count.
#[derive(Clone, Debug)]
pub struct AdamW<D: Dev> {
    pub cfg: AdamWConfig,
    pub step: u64,
    pub m: ParamTensors<D>,
    pub v: ParamTensors<D>,
}

fn adamw_step<S: Shape, D: Dev>(
    p: &mut Tensor<S, f32, D>,
    g: &Tensor<S, f32, D>,
    m: &mut Tensor<S, f32, D>,
    v: &mut Tensor<S, f32, D>,
    k: &StepConsts,
) {
    *m = m.clone() * k.b1 + g.clone() * (1.0 - k.b1);
    *v = v.clone() * k.b2 + g.clone().square() * (1.0 - k.b2);
    let denom = (v.clone() * (1.0 / k.bc2)).sqrt() + k.eps;
    let upd = m.clone() * (1.0 / k.bc1) / denom;
    // Decoupled weight decay (as torch.optim.AdamW): p <- p - lr*wd*p - lr*update.
    *p = p.clone() * (1.0 - k.lr * k.wd) - upd * k.lr;
}

struct StepConsts {
    lr: f32,
    wd: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
}

impl<D: Dev> AdamW<D> {
    /// Fresh state for the parameters of `m`.
    pub fn new(m: &impl HasParams<D>, cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            step: 0,
            m: ParamTensors::zeros(m),
            v: ParamTensors::zeros(m),
        }
    }

    /// One update with learning rate `lr`. Weight decay applies to matrices
    /// only (not to norm gains), as transformers' Trainer does.
    pub fn update(&mut self, model: &mut impl HasParams<D>, grads: &ParamTensors<D>, lr: f32) {
        self.step += 1;
        let t = self.step as i32;
        let c = &self.cfg;
        let mut k = StepConsts {
            lr,
            wd: 0.0,
            b1: c.beta1,
            b2: c.beta2,
            eps: c.eps,
            bc1: 1.0 - c.beta1.powi(t),
            bc2: 1.0 - c.beta2.powi(t),
        };
        for (i, p) in model.params_mut().into_iter().enumerate() {
            match (p, &grads.0[i], &mut self.m.0[i], &mut self.v.0[i]) {
                (ParamMut::Vector(p), Slot::Vector(g), Slot::Vector(m), Slot::Vector(v)) => {
                    k.wd = 0.0;
                    adamw_step(p, g, m, v, &k)
                }
                (ParamMut::Matrix(p), Slot::Matrix(g), Slot::Matrix(m), Slot::Matrix(v)) => {
                    k.wd = c.weight_decay;
                    adamw_step(p, g, m, v, &k)
                }
                _ => unreachable!("slots follow the parameter order"),
            }
        }
    }
}

/// Learning-rate schedule over `total` optimizer steps.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub enum Schedule {
    /// Constant after linear warmup.
    Constant { warmup: u64 },
    /// Linear warmup, then cosine decay to `min_ratio` × peak (Llama-2: 10%).
    Cosine {
        warmup: u64,
        total: u64,
        min_ratio: f32,
    },
    /// Linear warmup, then linear decay to 0 (transformers' default).
    Linear { warmup: u64, total: u64 },
}

impl Schedule {
    /// The multiplier of the peak learning rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f32 {
        // transformers' `get_*_schedule_with_warmup`: step 0 runs at lr 0.
        let warm = |w: u64| (step < w).then(|| step as f32 / w as f32);
        match *self {
            Schedule::Constant { warmup } => warm(warmup).unwrap_or(1.0),
            Schedule::Cosine {
                warmup,
                total,
                min_ratio,
            } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f32;
                let progress = ((step - warmup.min(step)) as f32 / span).min(1.0);
                min_ratio
                    + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
            }),
            Schedule::Linear { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f32;
                (1.0 - (step - warmup.min(step)) as f32 / span).max(0.0)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_has_the_derivative_sigmoid_everywhere() {
        let dev = Cpu::default();
        let xs = vec![-100.0f32, -3.0, 0.0, 0.5, 100.0];
        let x = dev.tensor_from_vec(xs.clone(), (5,));
        let y = softplus(x.leaky_trace());
        let v = y.as_vec();
        let g = y.sum::<Rank0, _>().backward().get(&x).as_vec();
        for (i, &xi) in xs.iter().enumerate() {
            let want = softplus_f64(xi as f64);
            assert!(
                (v[i] as f64 - want).abs() < 1e-5 * want.max(1.0),
                "{xi}: {}",
                v[i]
            );
            let sigma = 1.0 / (1.0 + (-xi as f64).exp());
            assert!(
                (g[i] as f64 - sigma).abs() < 1e-6,
                "{xi}: {} vs {sigma}",
                g[i]
            );
        }
        // the point DPO's default path starts at
        assert_eq!(g[2], 0.5);
    }

    #[test]
    fn schedules_follow_transformers() {
        // get_linear_schedule_with_warmup(warmup 3, total 10): 0, 1/3, 2/3, 1, 6/7, ...
        let lin = Schedule::Linear {
            warmup: 3,
            total: 10,
        };
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 6.0 / 7.0, 5.0 / 7.0];
        for (s, w) in want.iter().enumerate() {
            assert!((lin.factor(s as u64) - w).abs() < 1e-6, "step {s}");
        }
        assert_eq!(lin.factor(10), 0.0);
        let c = Schedule::Constant { warmup: 2 };
        assert_eq!((c.factor(0), c.factor(1), c.factor(2)), (0.0, 0.5, 1.0));
        assert_eq!(Schedule::Constant { warmup: 0 }.factor(0), 1.0);
    }

    #[test]
    fn cosine_schedule_shape() {
        let s = Schedule::Cosine {
            warmup: 3,
            total: 103,
            min_ratio: 0.1,
        };
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(1) - 1.0 / 3.0).abs() < 1e-6);
        assert!((s.factor(2) - 2.0 / 3.0).abs() < 1e-6);
        assert!((s.factor(3) - 1.0).abs() < 1e-6);
        assert!((s.factor(53) - 0.55).abs() < 1e-3);
        assert!((s.factor(103) - 0.1).abs() < 1e-6);
        assert!((s.factor(500) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn adamw_matches_the_formula() {
        // One parameter vector and one matrix: a single-layer "model".
        struct Two<D: Dev> {
            a: T1<D>,
            b: T2<D>,
        }
        impl<D: Dev> HasParams<D> for Two<D> {
            fn params(&self) -> Vec<(String, ParamRef<'_, D>)> {
                vec![
                    ("a".into(), ParamRef::Vector(&self.a)),
                    ("b".into(), ParamRef::Matrix(&self.b)),
                ]
            }
            fn params_mut(&mut self) -> Vec<ParamMut<'_, D>> {
                vec![ParamMut::Vector(&mut self.a), ParamMut::Matrix(&mut self.b)]
            }
        }
        let dev = Cpu::default();
        let mut m = Two {
            a: dev.tensor_from_vec(vec![1.0, -2.0], (2,)),
            b: dev.tensor_from_vec(vec![0.5], (1, 1)),
        };
        let mut opt = AdamW::new(
            &m,
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-5,
                weight_decay: 0.1,
            },
        );
        let g = ParamTensors(vec![
            Slot::Vector(dev.tensor_from_vec(vec![0.1, -0.3], (2,))),
            Slot::Matrix(dev.tensor_from_vec(vec![2.0], (1, 1))),
        ]);
        opt.update(&mut m, &g, 0.01);
        // After one step m̂ = g and v̂ = g², so the update is lr·g/(|g|+eps) ≈ ±lr.
        let a = m.a.as_vec();
        assert!(
            (a[0] - (1.0 - 0.01 * 0.1 / (0.1 + 1e-5))).abs() < 1e-6,
            "{a:?}"
        );
        assert!(
            (a[1] - (-2.0 + 0.01 * 0.3 / (0.3 + 1e-5))).abs() < 1e-6,
            "{a:?}"
        );
        let b = m.b.as_vec()[0];
        let want = 0.5 * (1.0 - 0.01 * 0.1) - 0.01 * 2.0 / (2.0 + 1e-5);
        assert!((b - want).abs() < 1e-6, "{b} vs {want}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let dev = Cpu::default();
        let mut g: ParamTensors<Cpu> = ParamTensors(vec![
            Slot::Vector(dev.tensor_from_vec(vec![3.0, 4.0], (2,))),
            Slot::Matrix(dev.tensor_from_vec(vec![12.0], (1, 1))),
        ]);
        let before = g.clip_global_norm(1.0);
        assert!((before - 13.0).abs() < 1e-5);
        assert!((g.global_norm() - 1.0).abs() < 1e-4);
    }
}
