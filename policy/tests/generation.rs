//! KV-cache decoding and batched generation agree with the full forward pass.
mod common;

use common::{expected, ids, load_model_fixture as load};
use policy::generate::{generate, FinishReason, SamplingConfig};

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 14],
        vec![7],
        vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 35, 8],
        vec![40, 41, 42, 43, 44],
    ]
}

#[test]
fn kv_cache_logprobs_equal_full_forward() {
    for name in ["gqa_llama3_rope", "tied_bf16"] {
        let ck = load(name);
        let cfg = SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let gens = generate(&ck.model, &prompts(), &cfg).unwrap();
        for (p, g) in prompts().iter().zip(&gens) {
            assert_eq!(g.tokens.len(), 12);
            let full: Vec<u32> = p.iter().chain(&g.tokens).copied().collect();
            let lp = ck.model.sequence_logprobs(&[full]).unwrap().remove(0);
            let tail = &lp[p.len() - 1..];
            for (i, (a, b)) in g.logprobs.iter().zip(tail).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{name}: step {i}: cached {a} vs full {b}"
                );
            }
        }
    }
}

#[test]
fn batched_greedy_equals_one_at_a_time() {
    let ck = load("gqa_llama3_rope");
    let cfg = SamplingConfig {
        max_new_tokens: 10,
        temperature: 0.0,
        ..Default::default()
    };
    let batched = generate(&ck.model, &prompts(), &cfg).unwrap();
    for (p, b) in prompts().iter().zip(&batched) {
        let alone = generate(&ck.model, std::slice::from_ref(p), &cfg)
            .unwrap()
            .remove(0);
        assert_eq!(alone.tokens, b.tokens, "prompt {p:?}");
    }
}

#[test]
fn sampling_is_reproducible_and_independent_of_batch() {
    let ck = load("tied_bf16");
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        temperature: 1.3,
        top_k: 20,
        top_p: 0.9,
        seed: 42,
        ..Default::default()
    };
    let a = generate(&ck.model, &prompts(), &cfg).unwrap();
    let b = generate(&ck.model, &prompts(), &cfg).unwrap();
    assert_eq!(
        a.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        b.iter().map(|g| &g.tokens).collect::<Vec<_>>()
    );
    let first_alone = generate(&ck.model, &prompts()[..1], &cfg).unwrap();
    assert_eq!(first_alone[0].tokens, a[0].tokens);
    let other = generate(
        &ck.model,
        &prompts(),
        &SamplingConfig {
            seed: 43,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(
        other.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        a.iter().map(|g| &g.tokens).collect::<Vec<_>>()
    );
}

#[test]
fn greedy_matches_transformers_generate() {
    let name = "gqa_llama3_rope";
    let exp = expected(name);
    let ck = load(name);
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        temperature: 0.0,
        ..Default::default()
    };
    let g = generate(&ck.model, &[ids(&exp["greedy_prompt"])], &cfg)
        .unwrap()
        .remove(0);
    assert_eq!(g.tokens, ids(&exp["greedy_tokens"]));
}

#[test]
fn stops_on_stop_tokens() {
    let ck = load("gqa_llama3_rope");
    let cfg = SamplingConfig {
        max_new_tokens: 10,
        temperature: 0.0,
        ..Default::default()
    };
    let free = generate(&ck.model, &prompts(), &cfg).unwrap();
    // make the 3rd greedy token of prompt 0 a stop token
    let stop = free[0].tokens[2];
    let cfg = SamplingConfig {
        stop_tokens: vec![stop],
        ..cfg
    };
    let g = generate(&ck.model, &prompts(), &cfg).unwrap();
    let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(g[0].tokens, free[0].tokens[..=first]);
    assert_eq!(g[0].finish_reason, FinishReason::Stop);
    // the other rows are unaffected until they hit the stop token themselves
    for (f, s) in free.iter().zip(&g).skip(1) {
        let n = f
            .tokens
            .iter()
            .position(|&t| t == stop)
            .map_or(f.tokens.len(), |i| i + 1);
        assert_eq!(s.tokens, f.tokens[..n]);
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let ck = load("tied_bf16");
    let cfg = SamplingConfig::default();
    assert!(generate(&ck.model, &[vec![]], &cfg).is_err());
    let e = generate(&ck.model, &[vec![1, 10_000]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
    assert!(ck.model.sequence_logprobs(&[vec![]]).is_err());
    assert_eq!(
        ck.model.sequence_logprobs(&[vec![1]]).unwrap(),
        vec![Vec::<f32>::new()]
    );
    assert!(generate(&ck.model, &[vec![1]], &SamplingConfig { top_p: 0.0, ..cfg }).is_err());
}
