//! Training on a synthetic preference set with a hidden rule, exact resume,
//! and gradient accumulation, on a tiny random Llama.
use dfdx::prelude::*;
use policy::config::LlamaConfig;
use policy::model::Llama;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reward_model::data::EncodedPair;
use reward_model::model::RewardModel;
use reward_model::train::{
    evaluate, load_checkpoint, metrics_path, split_held_out, train, TrainConfig,
};

const EOS: u32 = 2;
/// The hidden rule: a response containing this token is preferred.
const GOOD: u32 = 5;

fn tiny_rm(seed: u64) -> RewardModel<Cpu> {
    // pad == EOS and every row ends with EOS: the reward must be read from the
    // key mask, not from pad-token equality.
    let cfg = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 48, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "bos_token_id": 1, "eos_token_id": EOS, "pad_token_id": EOS, "tie_word_embeddings": false
    }))
    .unwrap();
    let backbone = Llama::random(cfg, &Cpu::default(), seed, 0.1).unwrap();
    let backbone = Llama::backbone_from_tensors(
        backbone.cfg.clone(),
        backbone.to_host_tensors(),
        &Cpu::default(),
    )
    .unwrap();
    RewardModel::from_backbone(backbone, seed, 0.02).unwrap()
}

/// Pairs whose chosen response contains GOOD and rejected does not; the
/// prompt is shared, the responses are random otherwise, and the GOOD token
/// sits anywhere in the response.
fn synthetic(n: usize, seed: u64) -> Vec<EncodedPair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let word = |rng: &mut StdRng| loop {
        let t = rng.gen_range(6..48u32);
        if t != GOOD {
            break t;
        }
    };
    (0..n)
        .map(|i| {
            let prompt: Vec<u32> = std::iter::once(1)
                .chain((0..rng.gen_range(2..6)).map(|_| word(&mut rng)))
                .collect();
            let resp = |good: bool, rng: &mut StdRng| {
                let mut r: Vec<u32> = (0..rng.gen_range(3..9)).map(|_| word(rng)).collect();
                if good {
                    let at = rng.gen_range(0..=r.len());
                    r.insert(at, GOOD);
                }
                let mut s = prompt.clone();
                s.extend(r);
                s.push(EOS);
                s
            };
            let chosen = resp(true, &mut rng);
            let rejected = resp(false, &mut rng);
            EncodedPair {
                group: format!("g{i}"),
                chosen,
                rejected,
                margin: 0.0,
                strength: None,
            }
        })
        .collect()
}

fn cfg() -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        batch_size: 16,
        micro_batch: 8,
        epochs: 1.0,
        log_every: 5,
        progress: false,
        ..TrainConfig::default()
    }
}

#[test]
fn learns_a_hidden_rule_to_high_held_out_accuracy() {
    let (tr, ev) = split_held_out(synthetic(600, 1), 0.2, 0).unwrap();
    assert_eq!(tr.len() + ev.len(), 600);
    assert!(ev.len() >= 100);
    let mut rm = tiny_rm(7);
    let before = evaluate(&rm, &ev, 32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    // 60 steps of 16 pairs: two epochs of the 480 training pairs
    let c = TrainConfig {
        max_steps: Some(60),
        eval_every: 20,
        ..cfg()
    };
    let o = train(&mut rm, &tr, &ev, &c, &out, None).unwrap();
    assert!(o.finished);
    let report = o.eval.unwrap();
    eprintln!(
        "held-out accuracy {:.3} -> {:.3}, loss {:.4} -> {:.4}, ece {:.3}",
        before.accuracy, report.accuracy, before.loss, report.loss, report.ece
    );
    assert!(
        report.accuracy >= 0.85,
        "held-out accuracy {} after 60 steps",
        report.accuracy
    );
    assert!(report.loss < before.loss);
    // the saved directory reloads with the fitted normalization: rewards of the
    // held-out responses have mean 0 and std 1
    let back = RewardModel::load(&out, &Cpu::default()).unwrap();
    let seqs: Vec<Vec<u32>> = ev
        .iter()
        .flat_map(|p| [p.chosen.clone(), p.rejected.clone()])
        .collect();
    let r = back.rewards(&seqs, 32).unwrap();
    let mean = r.iter().sum::<f32>() / r.len() as f32;
    let std = (r.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / r.len() as f32).sqrt();
    assert!(
        mean.abs() < 1e-3 && (std - 1.0).abs() < 1e-3,
        "normalized mean {mean} std {std}"
    );
    assert!(out.join("eval_report.json").exists());
    // metrics: a train line every 5 steps plus eval lines
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(metrics_path(&out))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 12);
    assert!(
        lines
            .iter()
            .filter(|l| l.get("eval_accuracy").is_some())
            .count()
            >= 3
    );
    for k in ["loss", "accuracy", "margin", "learning_rate", "grad_norm"] {
        assert!(
            lines[0][k].is_number(),
            "metrics line lacks {k}: {}",
            lines[0]
        );
    }
}

#[test]
fn resuming_gives_the_same_weights_as_an_uninterrupted_run() {
    let (tr, ev) = split_held_out(synthetic(120, 2), 0.25, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // batch 12 over 90 pairs: steps straddle epoch boundaries
    let c = TrainConfig {
        batch_size: 12,
        micro_batch: 5,
        max_steps: Some(9),
        ..cfg()
    };
    let mut a = tiny_rm(3);
    train(&mut a, &tr, &ev, &c, &dir.path().join("a"), None).unwrap();

    let out = dir.path().join("b");
    let mut b = tiny_rm(3);
    let first = train(
        &mut b,
        &tr,
        &ev,
        &TrainConfig {
            stop_after: Some(4),
            ..c.clone()
        },
        &out,
        None,
    )
    .unwrap();
    assert!(!first.finished);
    assert_eq!(first.steps, 4);
    drop(b);
    let (mut b, opt, progress) = load_checkpoint(&out, &Cpu::default())
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(opt.step, 4);
    assert_eq!(progress["cursor"], 48);
    let done = train(&mut b, &tr, &ev, &c, &out, Some((opt, progress))).unwrap();
    assert!(done.finished);

    let (ta, tb) = (a.to_host_tensors(), b.to_host_tensors());
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (name, x) in &ta {
        assert_eq!(x, &tb[name], "{name} differs after resume");
    }
    assert_eq!(a.normalization, b.normalization);
    // the metrics file reads like one run
    let steps = |p: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(metrics_path(p))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(steps(&dir.path().join("a")), steps(&out));

    // resuming on other data is refused with a clear error
    let (mut c2, opt, progress) = load_checkpoint(&out, &Cpu::default()).unwrap().unwrap();
    let e = train(&mut c2, &tr[1..], &ev, &c, &out, Some((opt, progress))).unwrap_err();
    assert!(format!("{e:#}").contains("cannot resume"), "{e:#}");
}

#[test]
fn micro_batches_accumulate_to_the_full_batch_gradient() {
    let pairs = synthetic(8, 3);
    let dir = tempfile::tempdir().unwrap();
    let one = |micro: usize, name: &str| {
        let mut rm = tiny_rm(5);
        let c = TrainConfig {
            batch_size: 8,
            micro_batch: micro,
            max_steps: Some(1),
            centering: 0.01,
            ..cfg()
        };
        train(&mut rm, &pairs, &[], &c, &dir.path().join(name), None).unwrap();
        rm.to_host_tensors()
    };
    let (full, split) = (one(8, "full"), one(3, "split"));
    for (name, x) in &full {
        let m = x
            .data
            .iter()
            .zip(&split[name].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(m < 1e-5, "{name}: max diff {m}");
    }
}

#[test]
fn safety_and_helpfulness_models_combine_as_llama2() {
    use reward_model::combine::{
        select, whiten, RewardFunction, RewardInput, SafetyHelpfulness, SingleReward, Source,
    };
    use reward_model::model::Normalization;
    let mut safety = tiny_rm(11);
    let help = tiny_rm(12);
    let pairs = synthetic(6, 9);
    let inputs: Vec<RewardInput> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| RewardInput {
            tokens: p.chosen.clone(),
            unsafe_prompt: i == 1,
        })
        .collect();
    let seqs: Vec<Vec<u32>> = inputs.iter().map(|i| i.tokens.clone()).collect();
    // spread the safety rewards so some fall below σ⁻¹(0.15) ≈ −1.73 and some above
    let raw = safety.raw_scores(&seqs, 4).unwrap();
    safety.normalization = Normalization::fit(&raw).unwrap();
    safety.normalization.gain *= 3.0;
    let s = safety.rewards(&seqs, 4).unwrap();
    let h = help.rewards(&seqs, 4).unwrap();
    let tags: Vec<bool> = inputs.iter().map(|i| i.unsafe_prompt).collect();
    let want = select(&s, &h, &tags, 0.15).unwrap();
    assert!(
        want.iter().any(|x| x.1 == Source::Safety)
            && want.iter().any(|x| x.1 == Source::Helpfulness),
        "{s:?}"
    );
    assert_eq!(
        want[1].1,
        Source::Safety,
        "unsafe prompt uses the safety model"
    );
    let combo = SafetyHelpfulness::new(safety, help.clone()).unwrap();
    let got = combo.rewards_with_source(&inputs).unwrap();
    let w = whiten(&want.iter().map(|x| x.0).collect::<Vec<_>>());
    for (i, (g, src)) in got.iter().enumerate() {
        assert_eq!(*src, want[i].1);
        assert!((g - w[i]).abs() < 1e-5);
    }
    // a single model as a reward function gives its normalized reward
    let single = SingleReward {
        model: help,
        batch_size: 4,
    };
    assert_eq!(single.rewards(&inputs).unwrap(), h);
}
