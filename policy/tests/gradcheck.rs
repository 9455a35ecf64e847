//! Finite-difference check of the backward pass on a tiny model: the
//! gradients dfdx computes through our forward (embedding, RMSNorm, RoPE,
//! grouped-query attention with padding, SwiGLU, head) match numerical ones.
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::model::{Batch, Llama, ParamMut};
use policy::train::{ParamTensors, Slot};

fn tiny(tied: bool) -> Llama<Cpu> {
    let cfg = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 13, "tie_word_embeddings": tied, "rms_norm_eps": 1e-5,
        "rope_theta": 100.0, "pad_token_id": 0
    }))
    .unwrap();
    Llama::random(cfg, &Cpu::default(), 3, 0.5).unwrap()
}

fn rows() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 7, 2, 9], vec![3, 4, 11], vec![12, 6, 8, 10]]
}

/// Mean NLL of next tokens over real (unpadded) positions.
fn loss_and_grads(m: &Llama<Cpu>) -> (f32, ParamTensors<Cpu>) {
    let b = Batch::right_padded(&rows(), 0).unwrap();
    let mut targets = vec![];
    let mut weights = vec![];
    for r in 0..b.batch {
        for i in 0..b.seq {
            let has_next = i + 1 < b.seq && b.key_mask[r * b.seq + i + 1];
            targets.push(if has_next {
                b.tokens[r * b.seq + i + 1]
            } else {
                0
            });
            weights.push(if has_next { 1.0f32 } else { 0.0 });
        }
    }
    let n: f32 = weights.iter().sum();
    let dev = m.dev.clone();
    let h = m
        .hidden(m.embed_tokens.trace(Gradients::leaky()), &b, None)
        .unwrap();
    let lp = m.target_logprobs(h, &targets, 1.0).unwrap();
    let w = dev.tensor_from_vec(weights, (b.batch * b.seq,));
    let loss = (lp * w).sum::<Rank0, _>() * (-1.0 / n);
    let value = loss.array();
    let mut grads = loss.backward();
    (value, ParamTensors::from_backward(m, &mut grads).unwrap())
}

fn nudge(m: &mut Llama<Cpu>, param: usize, index: usize, delta: f32) {
    let p = m.params_mut().into_iter().nth(param).unwrap();
    match p {
        ParamMut::Vector(t) => {
            let mut v = t.as_vec();
            v[index] += delta;
            t.copy_from(&v);
        }
        ParamMut::Matrix(t) => {
            let mut v = t.as_vec();
            v[index] += delta;
            t.copy_from(&v);
        }
    }
}

fn check(tied: bool) {
    let mut m = tiny(tied);
    let (_, grads) = loss_and_grads(&m);
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    let eps = 1e-2;
    let mut checked = 0;
    for (pi, name) in names.iter().enumerate() {
        let g = match &grads.0[pi] {
            Slot::Vector(t) => t.as_vec(),
            Slot::Matrix(t) => t.as_vec(),
        };
        // a spread of entries of every parameter
        for idx in (0..g.len()).step_by((g.len() / 4).max(1)).take(4) {
            nudge(&mut m, pi, idx, eps);
            let (up, _) = loss_and_grads(&m);
            nudge(&mut m, pi, idx, -2.0 * eps);
            let (down, _) = loss_and_grads(&m);
            nudge(&mut m, pi, idx, eps);
            let fd = (up - down) / (2.0 * eps);
            let an = g[idx];
            assert!(
                (fd - an).abs() <= 2e-3 + 2e-2 * an.abs(),
                "{name}[{idx}]: analytic {an} vs numeric {fd} (tied={tied})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4 * names.len() - 8);
    // padding does not leak into the loss: the embedding row of the pad token
    // is used only at padded positions, so its gradient is exactly zero.
    if !tied {
        let Slot::Matrix(e) = &grads.0[0] else {
            panic!()
        };
        let row0 = &e.as_vec()[..8];
        assert!(
            row0.iter().all(|&x| x == 0.0),
            "pad row got gradient {row0:?}"
        );
    }
}

#[test]
fn gradients_match_finite_differences_untied() {
    check(false);
}

#[test]
fn gradients_match_finite_differences_tied() {
    check(true);
}
