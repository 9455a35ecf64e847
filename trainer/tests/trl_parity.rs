//! One optimizer step of DPO (every loss, with and without a distinct
//! reference), SFT and the reward model against TRL's computation in torch,
//! from the fixtures of scripts/make_trl_fixtures.py (TRL 1.16, transformers
//! 5.24): the loss, TRL's metrics, the gradient norm before clipping and the
//! weights after one clipped AdamW step. The first DPO case is the default
//! path: reference = the starting policy, where every pair starts at Δ = 0.
use dfdx::prelude::*;
use policy::checkpoint::Checkpoint;
use policy::safetensors_io::read_dir_tensors;
use policy::train::AdamWConfig;
use policy::train_loop::{self, metrics_path, LoopConfig, ScheduleKind};
use serde_json::Value;
use std::path::PathBuf;
use trainer::data::{PreferencePair, Sequence};
use trainer::dpo::{DpoConfig, DpoLoss, DpoStage};
use trainer::policy_io::PolicyFiles;
use trainer::sft::SftStage;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/trl")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The loop settings of the fixture: one step over the whole batch.
fn one_step(e: &Value, batch: usize, micro: usize) -> LoopConfig {
    let a = &e["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap() as f32;
    LoopConfig {
        lr: f("lr"),
        batch_size: batch,
        micro_batch: micro,
        max_steps: Some(1),
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_grad_norm: e["max_grad_norm"].as_f64().unwrap() as f32,
        adamw: AdamWConfig {
            beta1: a["betas"][0].as_f64().unwrap() as f32,
            beta2: a["betas"][1].as_f64().unwrap() as f32,
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        log_every: 1,
        progress: false,
        ..LoopConfig::default()
    }
}

/// The first metrics line of a run, and the largest weight difference from
/// the fixture's weights after the step.
fn check_run(out: &std::path::Path, case: &Value) -> Value {
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(metrics_path(out))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let name = case["name"].as_str().unwrap();
    let want_norm = case["grad_norm"].as_f64().unwrap();
    let norm = line["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - want_norm).abs() <= 1e-3 * want_norm,
        "{name}: grad norm {norm} vs torch {want_norm}"
    );
    let want_loss = case["loss_value"].as_f64().unwrap();
    let loss = line["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{name}: loss {loss} vs torch {want_loss}"
    );
    let after = read_dir_tensors(out).unwrap();
    let bytes = std::fs::read(fixture(&format!("after_{name}.safetensors"))).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut worst = 0f32;
    for (k, t) in &after {
        let v = theirs
            .tensor(k)
            .unwrap_or_else(|_| panic!("{name}: {k} missing"));
        let w: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(w.len(), t.data.len(), "{name}: {k}");
        for (a, b) in t.data.iter().zip(&w) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("{name}: loss {loss:.6} (torch {want_loss:.6}), grad norm {norm:.6} (torch {want_norm:.6}), weights after the step within {worst:e}");
    assert!(
        worst <= 1e-5,
        "{name}: weights after one step differ by {worst}"
    );
    line
}

#[test]
fn dpo_one_step_matches_trl_for_every_loss_and_the_default_reference() {
    let e = expected();
    let dev = Cpu::default();
    let pairs: Vec<PreferencePair> = e["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PreferencePair {
            prompt: ids(&p["prompt"]),
            chosen: ids(&p["chosen"]),
            rejected: ids(&p["rejected"]),
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    for case in e["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !name.starts_with("dpo") {
            continue;
        }
        let loss = match case["loss"].as_str().unwrap() {
            "sigmoid" => DpoLoss::Sigmoid,
            "robust" => DpoLoss::Robust,
            "ipo" => DpoLoss::Ipo,
            other => panic!("unknown loss {other}"),
        };
        let cfg = DpoConfig {
            loss,
            beta: case["beta"].as_f64().unwrap() as f32,
            label_smoothing: case["label_smoothing"].as_f64().unwrap_or(0.0) as f32,
            rpo_alpha: case["rpo_alpha"].as_f64().unwrap_or(0.0) as f32,
        };
        let ck: Checkpoint<Cpu> = Checkpoint::load(&fixture("policy"), &dev).unwrap();
        let reference: Checkpoint<Cpu> =
            Checkpoint::load(&fixture(case["reference"].as_str().unwrap()), &dev).unwrap();
        // the whole batch in one forward, as the fixture (RPO's NLL is per forward batch)
        let mut stage = DpoStage::new(
            cfg,
            &reference.model,
            pairs.clone(),
            vec![],
            PolicyFiles::of(&ck),
            8,
        )
        .unwrap();
        let out = tmp.path().join(name);
        let mut model = ck.model.clone();
        train_loop::run(
            &mut model,
            &mut stage,
            &one_step(&e, pairs.len(), pairs.len()),
            &out,
            None,
        )
        .unwrap();
        let line = check_run(&out, case);
        for (k, want) in case["metrics"].as_object().unwrap() {
            let got = line[k.as_str()].as_f64().unwrap_or(f64::NAN);
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{name}: {k} {got} vs TRL {want}"
            );
        }
        if name == "dpo_default" {
            // policy == reference: Δ = 0 for every pair, yet the gradient is not 0
            assert_eq!(line["rewards/margins"].as_f64().unwrap(), 0.0);
        }
    }
}

#[test]
fn sft_one_step_matches_trl() {
    let e = expected();
    let dev = Cpu::default();
    let case = e["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sft")
        .unwrap()
        .clone();
    let train: Vec<Sequence> = e["sft"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| Sequence::prompt_response(&ids(&x["prompt"]), &ids(&x["completion"])))
        .collect();
    let ck: Checkpoint<Cpu> = Checkpoint::load(&fixture("policy"), &dev).unwrap();
    let n = train.len();
    // micro-batches of one: the token-weighted accumulation gives TRL's batch mean
    let mut stage = SftStage {
        train,
        eval: vec![],
        files: PolicyFiles::of(&ck),
        eval_batch: 8,
        name: "sft",
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let mut model = ck.model.clone();
    train_loop::run(&mut model, &mut stage, &one_step(&e, n, 1), &out, None).unwrap();
    check_run(&out, &case);
}

#[test]
fn reward_model_one_step_matches_trl() {
    use reward_model::data::EncodedPair;
    use reward_model::model::RewardModel;
    use reward_model::train::{train, TrainConfig};
    let e = expected();
    let case = e["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rm")
        .unwrap()
        .clone();
    let pairs: Vec<EncodedPair> = e["rm_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| EncodedPair {
            group: i.to_string(),
            chosen: ids(&p["chosen"]),
            rejected: ids(&p["rejected"]),
            margin: p["margin"].as_f64().unwrap() as f32,
            strength: None,
        })
        .collect();
    let mut rm: RewardModel<Cpu> = RewardModel::load(&fixture("rm"), &Cpu::default()).unwrap();
    let l = one_step(&e, pairs.len(), 2);
    let cfg = TrainConfig::from_loop(&l, case["centering"].as_f64().unwrap() as f32, 8);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rm");
    train(&mut rm, &pairs, &[], &cfg, &out, None).unwrap();
    let line = check_run(&out, &case);
    for k in ["accuracy", "margin"] {
        let (got, want) = (
            line[k].as_f64().unwrap(),
            case["metrics"][k].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "rm: {k} {got} vs TRL {want}"
        );
    }
}
