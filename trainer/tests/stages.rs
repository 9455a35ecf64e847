//! Behaviour of every stage on a tiny real checkpoint (random weights, a BPE
//! tokenizer trained by `rlhf policy init`): SFT, DPO, rejection sampling and
//! PPO change the model the way they should, resume is exact, and
//! micro-batching does not change the result.
use dfdx::prelude::*;
use policy::checkpoint::Checkpoint;
use policy::cli::{init, InitArgs, Preset};
use policy::config::DType;
use policy::generate::{generate, SamplingConfig};
use policy::model::Llama;
use policy::tokenizer::Tokenizer;
use policy::train_loop::{self, metrics_path, LoopConfig, ScheduleKind};
use reward_model::model::RewardModel;
use serde_json::json;
use std::path::{Path, PathBuf};
use trainer::data::{sft_example, PreferencePair, Prompt, Sequence};
use trainer::dpo::{pair_logprobs, DpoConfig, DpoStage};
use trainer::policy_io::{load_policy, PolicyFiles};
use trainer::ppo::{self, PpoConfig, PpoModels};
use trainer::ppo_math::KlController;
use trainer::reward::{Reward, Scored};
use trainer::rs::{self, RsConfig};
use trainer::sft::{mean_nll, SftStage};

fn tiny_policy(dir: &Path, seed: u64) -> PathBuf {
    let out = dir.join(format!("policy-{seed}"));
    if out.join("config.json").exists() {
        return out; // made earlier in this test, from the same seed
    }
    let a = InitArgs {
        out: out.clone(),
        preset: Preset::Tiny,
        corpus: None,
        hidden_size: Some(32),
        intermediate_size: Some(64),
        layers: Some(2),
        heads: Some(4),
        kv_heads: Some(2),
        vocab_size: Some(300),
        max_position_embeddings: 256,
        tie_embeddings: false,
        seed,
        dtype: DType::F32,
        overwrite: false,
    };
    init(&a, &Cpu::default()).unwrap();
    out
}

fn cfg(steps: u64, batch: usize, micro: usize, lr: f32) -> LoopConfig {
    LoopConfig {
        lr,
        batch_size: batch,
        micro_batch: micro,
        max_steps: Some(steps),
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        log_every: 1,
        progress: false,
        ..LoopConfig::default()
    }
}

fn sft_data(tok: &Tokenizer) -> Vec<Sequence> {
    (0..12)
        .map(|i| sft_example(tok, &json!({"prompt": format!("Question {i}: is the sky blue?"), "completion": " Yes, the sky is blue."})).unwrap())
        .collect()
}

fn max_diff(a: &Llama<Cpu>, b: &Llama<Cpu>) -> f32 {
    let (ta, tb) = (a.to_host_tensors(), b.to_host_tensors());
    ta.iter()
        .map(|(k, x)| {
            x.data
                .iter()
                .zip(&tb[k].data)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

#[test]
fn sft_lowers_response_nll_and_leaves_prompt_tokens_out_of_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, tok) = load_policy(&tiny_policy(dir.path(), 1), &Cpu::default()).unwrap();
    let data = sft_data(&tok);
    // the prompt is masked: only the completion + EOS are targets
    let completion_tokens = tok.encode(" Yes, the sky is blue.", false).unwrap().len() + 1;
    assert!(data.iter().all(|s| s.targets() == completion_tokens));
    let before = mean_nll(&ck.model, &data, 8).unwrap();
    let first_batch: Vec<Sequence> = train_loop::step_examples(0, 4, data.len(), 0)
        .into_iter()
        .map(|i| data[i].clone())
        .collect();
    let first_batch_nll = mean_nll(&ck.model, &first_batch, 8).unwrap();
    // the prompt tokens as targets instead
    let prompts_only: Vec<Sequence> = data
        .iter()
        .map(|s| Sequence {
            ids: s.ids.clone(),
            mask: s
                .mask
                .iter()
                .enumerate()
                .map(|(i, &m)| i > 0 && !m)
                .collect(),
        })
        .collect();
    let prompt_before = mean_nll(&ck.model, &prompts_only, 8).unwrap();
    let mut stage = SftStage {
        train: data.clone(),
        eval: data.clone(),
        files: PolicyFiles::of(&ck),
        eval_batch: 8,
        name: "sft",
    };
    let out = dir.path().join("sft");
    let o = train_loop::run(&mut ck.model, &mut stage, &cfg(40, 4, 4, 1e-2), &out, None).unwrap();
    assert!(o.finished);
    let after = mean_nll(&ck.model, &data, 8).unwrap();
    let prompt_after = mean_nll(&ck.model, &prompts_only, 8).unwrap();
    eprintln!("response NLL {before:.3} -> {after:.3}; prompt-token NLL {prompt_before:.3} -> {prompt_after:.3}");
    assert!(after < before * 0.1, "response NLL {before} -> {after}");
    // the prompts (mostly the same words) were never targets, so they were not learned
    assert!(
        prompt_after > 0.5 * prompt_before,
        "prompt-token NLL {prompt_before} -> {prompt_after}: prompts leaked into the loss"
    );
    // the first logged loss is the response-only NLL of the first batch
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(metrics_path(&out))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = lines[0]["loss"].as_f64().unwrap();
    assert!(
        (first - first_batch_nll).abs() < 1e-4,
        "first loss {first} vs response NLL of the batch {first_batch_nll}"
    );
    for k in ["loss", "grad_norm", "learning_rate", "epoch", "num_tokens"] {
        assert!(
            lines[0][k].is_number(),
            "metrics line lacks {k}: {}",
            lines[0]
        );
    }
    // TRL's num_tokens: the running total of input tokens (all 40 steps of 4 examples)
    let step0: usize = train_loop::step_examples(0, 4, data.len(), 0)
        .iter()
        .map(|&i| data[i].ids.len())
        .sum();
    assert_eq!(lines[0]["num_tokens"].as_f64().unwrap(), step0 as f64);
    let all: usize = (0..40)
        .flat_map(|s| train_loop::step_examples(s, 4, data.len(), 0))
        .map(|i| data[i].ids.len())
        .sum();
    assert_eq!(lines[39]["num_tokens"].as_f64().unwrap(), all as f64);
    assert!(lines.last().unwrap()["eval_loss"].as_f64().unwrap() < before);
    // the output is a complete checkpoint that generates
    let back = Checkpoint::load(&out, &Cpu::default()).unwrap();
    assert!(max_diff(&back.model, &ck.model) == 0.0);
    assert!(Tokenizer::load(&out).is_ok());
}

#[test]
fn resume_and_micro_batches_give_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_policy(dir.path(), 2);
    let dev = Cpu::default();
    let (ck, tok) = load_policy(&path, &dev).unwrap();
    let data = sft_data(&tok);
    let stage = |ck: &Checkpoint<Cpu>| SftStage {
        train: data.clone(),
        eval: vec![],
        files: PolicyFiles::of(ck),
        eval_batch: 8,
        name: "sft",
    };
    // batch 5 over 12 examples: steps straddle epochs; cosine schedule with warmup
    let c = LoopConfig {
        schedule: ScheduleKind::Cosine,
        warmup_ratio: 0.2,
        ..cfg(7, 5, 5, 2e-3)
    };
    let mut a = ck.model.clone();
    train_loop::run(&mut a, &mut stage(&ck), &c, &dir.path().join("a"), None).unwrap();
    // micro-batches of 2 accumulate to the same update (loss = mean over the batch's tokens)
    let mut m = ck.model.clone();
    train_loop::run(
        &mut m,
        &mut stage(&ck),
        &LoopConfig {
            micro_batch: 2,
            ..c.clone()
        },
        &dir.path().join("m"),
        None,
    )
    .unwrap();
    assert!(
        max_diff(&a, &m) < 2e-5,
        "micro-batching changed the weights by {}",
        max_diff(&a, &m)
    );
    // stop after 3 steps, resume from disk
    let out = dir.path().join("b");
    let mut b = ck.model.clone();
    let first = train_loop::run(
        &mut b,
        &mut stage(&ck),
        &LoopConfig {
            stop_after: Some(3),
            ..c.clone()
        },
        &out,
        None,
    )
    .unwrap();
    assert!(!first.finished && first.steps == 3);
    let (ck2, _) = load_policy(&out, &dev).unwrap();
    let state = train_loop::load_state(&out, &ck2.model, &dev)
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(state.1["cursor"], 15);
    let mut b = ck2.model;
    let done = train_loop::run(&mut b, &mut stage(&ck), &c, &out, Some(state)).unwrap();
    assert!(done.finished);
    assert_eq!(max_diff(&a, &b), 0.0, "resumed run differs");
    let steps = |p: &Path| -> Vec<u64> {
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
    // resuming on other data is refused
    let (ck3, _) = load_policy(&out, &dev).unwrap();
    let state = train_loop::load_state(&out, &ck3.model, &dev)
        .unwrap()
        .unwrap();
    let mut other = SftStage {
        train: data[1..].to_vec(),
        ..stage(&ck)
    };
    let e = train_loop::run(&mut ck3.model.clone(), &mut other, &c, &out, Some(state)).unwrap_err();
    assert!(format!("{e:#}").contains("cannot resume"), "{e:#}");
}

fn preference_pairs(tok: &Tokenizer) -> Vec<PreferencePair> {
    let enc = trainer::data::Encoder { tok };
    let t = |s: &str| reward_model::data::Content::Text(s.to_string());
    (0..16)
        .map(|i| {
            let p = t(&format!("Review {i}:"));
            let (prompt, chosen) = enc
                .prompt_response(&p, &t(" a wonderful, lovely film"))
                .unwrap();
            let (_, rejected) = enc
                .prompt_response(&p, &t(" a dull and boring mess"))
                .unwrap();
            PreferencePair {
                prompt,
                chosen,
                rejected,
            }
        })
        .collect()
}

#[test]
fn dpo_raises_preference_accuracy_on_its_training_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ck, tok) = load_policy(&tiny_policy(dir.path(), 3), &Cpu::default()).unwrap();
    let pairs = preference_pairs(&tok);
    let reference = ck.model.clone();
    let mut stage = DpoStage::new(
        DpoConfig::default(),
        &reference,
        pairs.clone(),
        vec![],
        PolicyFiles::of(&ck),
        8,
    )
    .unwrap();
    let out = dir.path().join("dpo");
    train_loop::run(&mut ck.model, &mut stage, &cfg(20, 8, 4, 2e-3), &out, None).unwrap();
    let (pol, refp) = (
        pair_logprobs(&ck.model, &pairs, 8).unwrap(),
        pair_logprobs(&reference, &pairs, 8).unwrap(),
    );
    let acc = pol
        .iter()
        .zip(&refp)
        .filter(|((c, r), (rc, rr))| c - rc > r - rr)
        .count() as f64
        / pairs.len() as f64;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(metrics_path(&out))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // at the start the policy is the reference: Δ = 0, loss = ln 2, no pair counted as won
    assert!(
        (lines[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-4,
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["rewards/accuracies"], 0.0);
    for k in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(lines[0][k].is_number(), "metrics line lacks {k}");
    }
    let last = lines.last().unwrap();
    eprintln!("DPO: accuracy {acc}, last {last}");
    assert_eq!(acc, 1.0, "preference accuracy on training pairs");
    assert!(last["rewards/margins"].as_f64().unwrap() > 0.5);
    assert!(last["loss"].as_f64().unwrap() < 0.5);
}

fn prompts(tok: &Tokenizer, n: usize) -> Vec<Prompt> {
    (0..n)
        .map(|i| {
            let content = reward_model::data::Content::Text(format!("Tell me about day {i}."));
            let ids = tok
                .encode(&format!("Tell me about day {i}."), true)
                .unwrap();
            Prompt {
                content,
                ids,
                unsafe_prompt: false,
            }
        })
        .collect()
}

#[test]
fn rejection_sampling_raises_the_reward_model_score_of_greedy_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_policy(dir.path(), 4);
    let dev = Cpu::default();
    let (mut ck, tok) = load_policy(&path, &dev).unwrap();
    // a reward model with a random head on another random backbone: some fixed scoring rule
    let rm = RewardModel::from_policy(&tiny_policy(dir.path(), 40), &dev, 9).unwrap();
    let reward = Reward::Model(Box::new(reward_model::combine::SingleReward {
        model: rm,
        batch_size: 32,
    }));
    let ps = prompts(&tok, 16);
    let greedy_score = |m: &Llama<Cpu>| {
        let ids: Vec<Vec<u32>> = ps.iter().map(|p| p.ids.clone()).collect();
        let g = generate(
            m,
            &ids,
            &SamplingConfig {
                max_new_tokens: 8,
                temperature: 0.0,
                ..SamplingConfig::default()
            },
        )
        .unwrap();
        let texts: Vec<String> = g
            .iter()
            .map(|x| tok.decode(&x.tokens, true).unwrap())
            .collect();
        let s: Vec<Scored> = ps
            .iter()
            .zip(&g)
            .zip(&texts)
            .map(|((p, x), t)| Scored {
                prompt: p,
                response_ids: &x.tokens,
                response_text: t,
            })
            .collect();
        let r = reward.score(&s, Some(&tok)).unwrap();
        r.iter().sum::<f32>() / r.len() as f32
    };
    let before = greedy_score(&ck.model);
    let rc = RsConfig {
        k: 8,
        sampling: SamplingConfig {
            max_new_tokens: 8,
            temperature: 1.0,
            seed: 1,
            ..SamplingConfig::default()
        },
        gen_batch: 64,
        progress: false,
    };
    let samples = rs::sample(&ck.model, &tok, &ps, &reward, &rc).unwrap();
    assert_eq!(samples.len(), 16 * 8);
    let kept = rs::select_best(&samples, &[], true);
    let report = rs::report(&samples, &kept, ps.len(), &rc);
    assert_eq!(kept.len(), 16);
    assert!(report.kept.mean > report.samples.mean);
    let mut stage = SftStage {
        train: rs::to_sequences(&kept),
        eval: vec![],
        files: PolicyFiles::of(&ck),
        eval_batch: 16,
        name: "rs",
    };
    train_loop::run(
        &mut ck.model,
        &mut stage,
        &cfg(60, 8, 8, 1e-2),
        &dir.path().join("rs"),
        None,
    )
    .unwrap();
    let after = greedy_score(&ck.model);
    eprintln!(
        "RS: greedy RM score {before:.3} -> {after:.3}; samples mean {:.3}, kept mean {:.3}",
        report.samples.mean, report.kept.mean
    );
    assert!(
        after > before + 0.5 * (report.kept.mean - report.samples.mean) as f32,
        "greedy score {before} -> {after}"
    );
}

/// Llama-2's safety + helpfulness reward from two random-head reward models.
fn combined_reward(dir: &Path) -> (Reward<Cpu>, RewardModel<Cpu>, RewardModel<Cpu>) {
    let dev = Cpu::default();
    let s = RewardModel::from_policy(&tiny_policy(dir, 41), &dev, 5).unwrap();
    let h = RewardModel::from_policy(&tiny_policy(dir, 42), &dev, 6).unwrap();
    let mut c = reward_model::combine::SafetyHelpfulness::new(s.clone(), h.clone()).unwrap();
    // a threshold that the random safety scores straddle, so both models are used
    c.threshold = 0.5;
    (Reward::SafetyHelpfulness(Box::new(c)), s, h)
}

/// What the reward models score for a sample: its prompt and response text, joined.
fn reward_seq(tok: &Tokenizer, ps: &[Prompt], x: &rs::Sample) -> Vec<u32> {
    let t = reward_model::data::Content::Text(x.response.clone());
    reward_model::data::reward_tokens(tok, &ps[x.prompt_index].content, &t).unwrap()
}

/// The combined reward before whitening (whitening over one set keeps the order).
fn unwhitened(
    s: &RewardModel<Cpu>,
    h: &RewardModel<Cpu>,
    seqs: &[Vec<u32>],
    threshold: f32,
) -> Vec<f32> {
    let n = seqs.len();
    let (rs_, rh) = (s.rewards(seqs, 8).unwrap(), h.rewards(seqs, 8).unwrap());
    let tags = vec![false; n];
    reward_model::combine::select(&rs_, &rh, &tags, threshold)
        .unwrap()
        .into_iter()
        .map(|v| v.0)
        .collect()
}

#[test]
fn rejection_sampling_with_the_combined_reward_keeps_each_prompts_true_best() {
    // K = 3 does not divide the generation batch of 4: a prompt's samples span
    // two batches, and must still be ranked on one scale.
    let dir = tempfile::tempdir().unwrap();
    let (ck, tok) = load_policy(&tiny_policy(dir.path(), 4), &Cpu::default()).unwrap();
    let (reward, s, h) = combined_reward(dir.path());
    let ps = prompts(&tok, 8);
    let rc = RsConfig {
        k: 3,
        sampling: SamplingConfig {
            max_new_tokens: 6,
            temperature: 1.0,
            seed: 3,
            ..SamplingConfig::default()
        },
        gen_batch: 4,
        progress: false,
    };
    let samples = rs::sample(&ck.model, &tok, &ps, &reward, &rc).unwrap();
    let seqs: Vec<Vec<u32>> = samples.iter().map(|x| reward_seq(&tok, &ps, x)).collect();
    let truth = unwhitened(&s, &h, &seqs, 0.5);
    let kept = rs::select_best(&samples, &[], true);
    assert_eq!(kept.len(), ps.len());
    for k in &kept {
        let best = samples
            .iter()
            .zip(&truth)
            .filter(|(x, _)| x.prompt_index == k.prompt_index && !x.response_ids.is_empty())
            .map(|(_, &t)| t)
            .fold(f32::MIN, f32::max);
        let i = samples.iter().position(|x| x == k).unwrap();
        assert_eq!(
            truth[i], best,
            "prompt {}: kept a sample that is not its best",
            k.prompt_index
        );
    }
    // the case the test is for: whitening each generation batch of 4 on its
    // own (the old behaviour) keeps some prompt's second-best sample here
    let per_chunk: Vec<f32> = truth
        .chunks(4)
        .flat_map(reward_model::combine::whiten)
        .collect();
    let chunked: Vec<rs::Sample> = samples
        .iter()
        .zip(&per_chunk)
        .map(|(x, &r)| rs::Sample {
            reward: r,
            ..x.clone()
        })
        .collect();
    let wrong = rs::select_best(&chunked, &[], true)
        .iter()
        .zip(&kept)
        .filter(|(a, b)| a.response_ids != b.response_ids)
        .count();
    assert!(
        wrong > 0,
        "per-chunk whitening would pick the same samples: the test shows nothing"
    );
    // one scale: the stored rewards are the whitened truth, in the same order
    for (i, j) in (0..samples.len()).zip(1..samples.len()) {
        let (a, b) = (samples[i].reward, samples[j].reward);
        assert!(
            (truth[i] < truth[j] && a <= b)
                || (truth[i] > truth[j] && a >= b)
                || truth[i] == truth[j],
            "samples {i} and {j} are ordered differently by the stored rewards"
        );
    }
}

#[test]
fn the_pool_is_re_scored_with_the_current_reward() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, tok) = load_policy(&tiny_policy(dir.path(), 4), &Cpu::default()).unwrap();
    let ps = prompts(&tok, 3);
    let rc = RsConfig {
        k: 2,
        sampling: SamplingConfig {
            max_new_tokens: 6,
            temperature: 1.0,
            seed: 8,
            ..SamplingConfig::default()
        },
        gen_batch: 4,
        progress: false,
    };
    let old = rs::generate_samples(&ck.model, &tok, &ps, &rc).unwrap();
    // an earlier round's best, stored with stale rewards from another reward
    let mut pool: Vec<rs::Sample> = old
        .iter()
        .map(|x| rs::Sample {
            reward: 1e6,
            origin: "round1.best.jsonl".into(),
            ..x.clone()
        })
        .collect();
    let rm = RewardModel::from_policy(&tiny_policy(dir.path(), 40), &Cpu::default(), 9).unwrap();
    let want: Vec<f32> = {
        let seqs: Vec<Vec<u32>> = pool.iter().map(|x| reward_seq(&tok, &ps, x)).collect();
        rm.rewards(&seqs, 8).unwrap()
    };
    let reward = Reward::Model(Box::new(reward_model::combine::SingleReward {
        model: rm,
        batch_size: 8,
    }));
    rs::score(&mut pool, &ps, &tok, &reward).unwrap();
    for (x, w) in pool.iter().zip(&want) {
        assert!((x.reward - w).abs() < 1e-5, "{} vs {w}", x.reward);
    }
}

#[test]
fn every_stage_tokenizes_prompt_and_response_by_one_rule() {
    // A prompt ending in a space: tokenized alone it ends with a space token,
    // joined with the response the space merges into the response's first
    // word. TRL (and the reward model's training) tokenize the joined text.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_policy(dir.path(), 4);
    let (_, tok) = load_policy(&path, &Cpu::default()).unwrap();
    let t = |s: &str| reward_model::data::Content::Text(s.to_string());
    let (prompt, response) = ("Tell me about the ", "weather today.");
    let joint = reward_model::data::reward_tokens(&tok, &t(prompt), &t(response)).unwrap();
    let separate = [
        tok.encode(prompt, true).unwrap(),
        tok.encode(response, false).unwrap(),
    ]
    .concat();
    assert_ne!(
        joint[..joint.len() - 1],
        separate[..],
        "the example must merge across the boundary"
    );
    // SFT and DPO train on the joint tokens, the loss from where the prompt
    // tokenized alone and the joint tokens diverge (TRL's common prefix)
    let enc = trainer::data::Encoder { tok: &tok };
    let (p, c) = enc.prompt_response(&t(prompt), &t(response)).unwrap();
    assert_eq!([p.clone(), c.clone()].concat(), joint);
    let alone = tok.encode(prompt, true).unwrap();
    assert!(
        p.len() < alone.len() && alone.starts_with(&p),
        "{p:?} vs {alone:?}"
    );
    let sft = sft_example(&tok, &json!({"prompt": prompt, "completion": response})).unwrap();
    assert_eq!(sft.ids, joint);
    // a sampled response (generated ids after the prompt's own ids) is scored
    // by the reward model on the joint tokens, as in its training
    let rm = RewardModel::from_policy(&path, &Cpu::default(), 3).unwrap();
    let want = rm.rewards(std::slice::from_ref(&joint), 1).unwrap()[0];
    let sample_ids = tok.encode(response, false).unwrap();
    let reward = Reward::Model(Box::new(reward_model::combine::SingleReward {
        model: rm,
        batch_size: 4,
    }));
    let pr = Prompt {
        content: t(prompt),
        ids: tok.encode(prompt, true).unwrap(),
        unsafe_prompt: false,
    };
    let got = reward
        .score(
            &[Scored {
                prompt: &pr,
                response_ids: &sample_ids,
                response_text: response,
            }],
            Some(&tok),
        )
        .unwrap();
    assert!((got[0] - want).abs() < 1e-6, "{} vs {want}", got[0]);
}

fn ppo_setup(dir: &Path, seed: u64) -> (PpoModels<Cpu>, Tokenizer, Vec<Prompt>) {
    let dev = Cpu::default();
    let path = tiny_policy(dir, seed);
    let (ck, tok) = load_policy(&path, &dev).unwrap();
    let critic = RewardModel::from_policy(&path, &dev, 1).unwrap();
    let files = PolicyFiles::of(&ck);
    let ps = prompts(&tok, 32);
    (
        PpoModels {
            reference: ck.model.clone(),
            actor: ck.model,
            critic,
            files,
        },
        tok,
        ps,
    )
}

/// Reward: the share of characters of the response that are the letter `e`.
fn letter_e() -> Reward<Cpu> {
    Reward::Function(Box::new(|_, r: &str| {
        if r.is_empty() {
            0.0
        } else {
            r.chars().filter(|&c| c == 'e').count() as f32 / r.chars().count() as f32 * 4.0
        }
    }))
}

fn ppo_cfg(iterations: u64) -> PpoConfig {
    let mut c = PpoConfig::trl();
    c.train = LoopConfig {
        lr: 3e-3,
        batch_size: 16,
        micro_batch: 8,
        max_steps: Some(iterations),
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        progress: false,
        ..c.train
    };
    c.ppo_epochs = 2;
    c.mini_batches = 2;
    c.max_new_tokens = 6;
    c.temperature = 1.0;
    c.kl = KlController {
        beta: 0.05,
        adaptive: Some((2.0, 100.0)),
    };
    c
}

#[test]
fn ppo_raises_a_programmatic_reward_with_bounded_kl() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, tok, ps) = ppo_setup(dir.path(), 5);
    let out = dir.path().join("ppo");
    let o = ppo::train(
        &mut m,
        &letter_e(),
        Some(&tok),
        &ps,
        &ppo_cfg(14),
        &out,
        None,
    )
    .unwrap();
    assert!(o.finished);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(metrics_path(&out))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 14);
    let score = |l: &serde_json::Value| l["objective/scores"].as_f64().unwrap();
    let first: f64 = lines[..3].iter().map(score).sum::<f64>() / 3.0;
    let last: f64 = lines[11..].iter().map(score).sum::<f64>() / 3.0;
    let kl = lines[11..]
        .iter()
        .map(|l| l["objective/kl"].as_f64().unwrap())
        .fold(0f64, f64::max);
    eprintln!(
        "PPO: score {first:.3} -> {last:.3}, kl {kl:.3}; last line {}",
        lines[13]
    );
    assert!(last > first + 0.1, "mean reward {first} -> {last}");
    assert!(kl < 10.0, "KL to the reference {kl}");
    for k in [
        "objective/kl",
        "objective/rlhf_reward",
        "objective/entropy",
        "policy/clipfrac_avg",
        "policy/approxkl_avg",
        "loss/value_avg",
        "eps",
        "time/generate_s",
        "time/train_s",
        "kl_coef",
    ] {
        assert!(
            lines[0][k].is_number(),
            "metrics line lacks {k}: {}",
            lines[0]
        );
    }
    // the adaptive controller moved β
    assert_ne!(lines[13]["kl_coef"].as_f64().unwrap(), 0.05);
    // the output is a policy checkpoint plus the value model
    Checkpoint::load(&out, &Cpu::default()).unwrap();
    RewardModel::load(&out.join(ppo::VALUE_MODEL_DIR), &Cpu::default()).unwrap();
}

#[test]
fn ppo_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, tok, ps) = ppo_setup(dir.path(), 6);
    let c = ppo_cfg(4);
    ppo::train(
        &mut a,
        &letter_e(),
        Some(&tok),
        &ps,
        &c,
        &dir.path().join("a"),
        None,
    )
    .unwrap();
    let (mut b, _, _) = ppo_setup(dir.path(), 6);
    let out = dir.path().join("b");
    let first = ppo::train(
        &mut b,
        &letter_e(),
        Some(&tok),
        &ps,
        &PpoConfig {
            train: LoopConfig {
                stop_after: Some(2),
                ..c.train.clone()
            },
            ..c.clone()
        },
        &out,
        None,
    )
    .unwrap();
    assert!(!first.finished);
    let saved = ppo::load_checkpoint(&out, &Cpu::default())
        .unwrap()
        .expect("checkpoint");
    let mut b = PpoModels {
        actor: saved.actor,
        critic: saved.critic,
        reference: b.reference,
        files: saved.files,
    };
    let done = ppo::train(
        &mut b,
        &letter_e(),
        Some(&tok),
        &ps,
        &c,
        &out,
        Some(saved.state),
    )
    .unwrap();
    assert!(done.finished);
    assert_eq!(
        max_diff(&a.actor, &b.actor),
        0.0,
        "actor differs after resume"
    );
    assert_eq!(
        a.critic.to_host_tensors(),
        b.critic.to_host_tensors(),
        "critic differs after resume"
    );
}

#[test]
fn safety_and_helpfulness_rewards_follow_the_prompt_tag() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Cpu::default();
    let path = tiny_policy(dir.path(), 8);
    let (_, tok) = load_policy(&path, &dev).unwrap();
    let safety = RewardModel::from_policy(&path, &dev, 1).unwrap();
    let help = RewardModel::from_policy(&path, &dev, 2).unwrap();
    let mut combo =
        reward_model::combine::SafetyHelpfulness::new(safety.clone(), help.clone()).unwrap();
    combo.whiten = false;
    combo.threshold = 0.0; // σ(safety) < 0 never holds: only the tag decides
    let reward = Reward::SafetyHelpfulness(Box::new(combo));
    let mut ps = prompts(&tok, 2);
    ps[1].unsafe_prompt = true;
    let resp = tok.encode(" fine", false).unwrap();
    let s: Vec<Scored> = ps
        .iter()
        .map(|p| Scored {
            prompt: p,
            response_ids: &resp,
            response_text: " fine",
        })
        .collect();
    let got = reward.score(&s, Some(&tok)).unwrap();
    let seq = |p: &Prompt| {
        vec![reward_model::data::reward_tokens(
            &tok,
            &p.content,
            &reward_model::data::Content::Text(" fine".into()),
        )
        .unwrap()]
    };
    assert!(
        (got[0] - help.rewards(&seq(&ps[0]), 1).unwrap()[0]).abs() < 1e-5,
        "safe prompt → helpfulness"
    );
    assert!(
        (got[1] - safety.rewards(&seq(&ps[1]), 1).unwrap()[0]).abs() < 1e-5,
        "unsafe prompt → safety"
    );
}
