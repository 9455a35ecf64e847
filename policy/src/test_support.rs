//! Helpers the crate's unit tests share: tiny random models, random
//! matrices and a tolerance check.
use crate::config::LlamaConfig;
use crate::model::{Llama, T2};
use dfdx::prelude::*;
use rand::{rngs::StdRng, Rng};

/// A random CPU model with the `config.json` fields `cfg`.
pub(crate) fn tiny_llama(cfg: serde_json::Value, seed: u64, init_std: f32) -> Llama<Cpu> {
    let cfg = LlamaConfig::from_json(&cfg).unwrap();
    Llama::random(cfg, &Cpu::default(), seed, init_std).unwrap()
}

/// A `rows × cols` matrix, uniform in `(-amp, amp)`.
pub(crate) fn rand_mat(dev: &Cpu, rng: &mut StdRng, rows: usize, cols: usize, amp: f32) -> T2<Cpu> {
    dev.tensor_from_vec(
        (0..rows * cols).map(|_| rng.gen_range(-amp..amp)).collect(),
        (rows, cols),
    )
}

/// `a` and `b` agree elementwise to `rel · (1 + max(|a|, |b|))`.
pub(crate) fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = rel * (1.0 + x.abs().max(y.abs()));
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}
