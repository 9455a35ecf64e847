//! The CUDA device computes what the CPU computes (and so what transformers
//! computes). Built only with `--features cuda`; run by scripts/gpu-check.sh.
#![cfg(feature = "cuda")]
mod common;

use common::model_fixture as fixture;
use dfdx::prelude::*;
use policy::checkpoint::Checkpoint;
use policy::generate::{generate, SamplingConfig};

#[test]
fn cuda_logprobs_and_greedy_match_cpu() {
    let gpu = Cuda::default();
    let cpu = Cpu::default();
    for name in ["gqa_llama3_rope", "tied_bf16", "mqa_linear_sharded"] {
        let a = Checkpoint::load(&fixture(name), &cpu).unwrap();
        let b = Checkpoint::load(&fixture(name), &gpu).unwrap();
        let seqs = vec![vec![1, 5, 9, 14, 3, 2, 7, 8], vec![4, 6, 11]];
        let la = a.model.sequence_logprobs(&seqs).unwrap();
        let lb = b.model.sequence_logprobs(&seqs).unwrap();
        for (x, y) in la.iter().flatten().zip(lb.iter().flatten()) {
            assert!((x - y).abs() < 1e-4, "{name}: cpu {x} vs cuda {y}");
        }
        let cfg = SamplingConfig {
            max_new_tokens: 10,
            temperature: 0.0,
            ..Default::default()
        };
        let ga = generate(&a.model, &seqs, &cfg).unwrap();
        let gb = generate(&b.model, &seqs, &cfg).unwrap();
        for (x, y) in ga.iter().zip(&gb) {
            assert_eq!(x.tokens, y.tokens, "{name}");
        }
    }
}
