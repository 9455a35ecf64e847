//! Resumable training state shared by every trainer: AdamW moments and step
//! (safetensors, f32, exact), plus the run's progress (seed, data cursor,
//! anything the stage needs) as JSON.
//!
//! Layout inside a checkpoint directory:
//! `trainer_state/optimizer.safetensors` (tensors `m.<param>` / `v.<param>`)
//! and `trainer_state/state.json`. Callers write it inside the same
//! temporary directory as the weights ([`crate::fs_atomic::write_dir_atomic`]),
//! so weights and optimizer state are replaced together or not at all.
//!
//! Randomness: trainers should derive every random choice from
//! `(seed, step)` or `(seed, epoch)` (e.g. the data order of an epoch is a
//! shuffle seeded by `seed + epoch`), so the RNG "state" is the seed plus the
//! step stored here, and a resumed run draws exactly what an uninterrupted
//! one would have.
use crate::config::DType;
use crate::fs_atomic::write_file_synced;
use crate::model::Dev;
use crate::safetensors_io::{read_dir_tensors, write_tensors, HostTensor};
use crate::train::{AdamW, AdamWConfig, HasParams, ParamTensors};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Subdirectory of a checkpoint holding the training state.
pub const TRAINER_STATE_DIR: &str = "trainer_state";

/// Version of the on-disk format; bumped on incompatible changes.
const FORMAT_VERSION: u64 = 1;

/// Writes the optimizer and `progress` into `ckpt_dir/trainer_state/`.
///
/// `progress` is free-form JSON owned by the trainer (data cursor, seed,
/// metrics so far, the config the run was started with, ...).
pub fn save<D: Dev>(
    ckpt_dir: &Path,
    model: &impl HasParams<D>,
    opt: &AdamW<D>,
    progress: &Value,
) -> Result<()> {
    let dir = ckpt_dir.join(TRAINER_STATE_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
    for (name, t) in opt.m.to_host(model) {
        tensors.insert(format!("m.{name}"), t);
    }
    for (name, t) in opt.v.to_host(model) {
        tensors.insert(format!("v.{name}"), t);
    }
    // f32 keeps the moments exact, so a resumed run is bit-identical.
    let tmp = tempfile::tempdir_in(&dir)
        .context("cannot create a temporary directory for the optimizer state")?;
    write_tensors(tmp.path(), &tensors, DType::F32, usize::MAX)?;
    std::fs::rename(
        tmp.path().join("model.safetensors"),
        dir.join("optimizer.safetensors"),
    )
    .context("cannot write optimizer.safetensors")?;
    let state = json!({
        "format_version": FORMAT_VERSION,
        "optimizer": {"step": opt.step, "config": serde_json::to_value(opt.cfg)?},
        "progress": progress,
    });
    write_file_synced(
        &dir.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )
}

/// Whether `ckpt_dir` holds a training state.
pub fn exists(ckpt_dir: &Path) -> bool {
    ckpt_dir
        .join(TRAINER_STATE_DIR)
        .join("state.json")
        .is_file()
}

/// The progress JSON saved in `dir` (see [`save`]), without loading the
/// optimizer; None when `dir` holds no readable training state.
pub fn progress(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(TRAINER_STATE_DIR).join("state.json")).ok()?;
    let mut v: Value = serde_json::from_str(&text).ok()?;
    Some(v.get_mut("progress")?.take())
}

/// `(step, total)` of the run saved in `dir`.
pub fn steps(dir: &Path) -> Option<(u64, u64)> {
    let p = progress(dir)?;
    Some((p["step"].as_u64()?, p["total_steps"].as_u64()?))
}

/// `(step, total)` of a training checkpoint in `dir` that stopped before its
/// last step (an interrupted run); None for a finished run or a directory
/// without training state.
pub fn unfinished(dir: &Path) -> Option<(u64, u64)> {
    steps(dir).filter(|(step, total)| step < total)
}

/// Reads the optimizer (for the parameters of `model`, shapes checked) and
/// the progress JSON written by [`save`].
pub fn load<D: Dev>(
    ckpt_dir: &Path,
    model: &impl HasParams<D>,
    dev: &D,
) -> Result<(AdamW<D>, Value)> {
    let dir = ckpt_dir.join(TRAINER_STATE_DIR);
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", state_path.display()))?;
    let version = state
        .get("format_version")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if version != FORMAT_VERSION {
        bail!(
            "{}: training state format {version} is not supported (expected {FORMAT_VERSION})",
            state_path.display()
        );
    }
    let step = state
        .pointer("/optimizer/step")
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: missing optimizer.step", state_path.display()))?;
    let cfg: AdamWConfig = serde_json::from_value(
        state
            .pointer("/optimizer/config")
            .cloned()
            .unwrap_or(Value::Null),
    )
    .with_context(|| format!("{}: bad optimizer.config", state_path.display()))?;
    // read_dir_tensors wants `model.safetensors`; read the one file through a link-free copy path.
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    std::fs::copy(
        dir.join("optimizer.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .with_context(|| {
        format!(
            "cannot read {}",
            dir.join("optimizer.safetensors").display()
        )
    })?;
    let all = read_dir_tensors(tmp.path())?;
    let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
    for (name, t) in all {
        if let Some(n) = name.strip_prefix("m.") {
            m.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("v.") {
            v.insert(n.to_string(), t);
        } else {
            bail!("optimizer state has an unexpected tensor `{name}`");
        }
    }
    let m = ParamTensors::from_host(model, dev, m)
        .context("optimizer first moments do not match the model")?;
    let v = ParamTensors::from_host(model, dev, v)
        .context("optimizer second moments do not match the model")?;
    let progress = state.get("progress").cloned().unwrap_or(Value::Null);
    Ok((AdamW { cfg, step, m, v }, progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Llama;
    use crate::train::Slot;
    use dfdx::prelude::*;

    fn tiny(layers: usize) -> Llama<Cpu> {
        crate::test_support::tiny_llama(
            json!({"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": layers,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 11}),
            1,
            0.5,
        )
    }

    #[test]
    fn round_trip_is_exact_and_mismatches_are_refused() {
        let dev = Cpu::default();
        let m = tiny(1);
        let mut opt = AdamW::new(&m, AdamWConfig::default());
        // non-trivial moments: one update with gradients equal to the weights
        let g = ParamTensors(
            m.params()
                .iter()
                .map(|(_, p)| match p {
                    crate::model::ParamRef::Vector(t) => Slot::Vector((*t).clone()),
                    crate::model::ParamRef::Matrix(t) => Slot::Matrix((*t).clone()),
                })
                .collect(),
        );
        let mut m2 = m.clone();
        opt.update(&mut m2, &g, 1e-3);
        let dir = tempfile::tempdir().unwrap();
        assert!(!exists(dir.path()));
        save(dir.path(), &m2, &opt, &json!({"cursor": 7})).unwrap();
        assert!(exists(dir.path()));
        let (back, progress) = load(dir.path(), &m2, &dev).unwrap();
        assert_eq!(back.step, 1);
        assert_eq!(progress["cursor"], 7);
        assert_eq!(back.m.to_host(&m2), opt.m.to_host(&m2));
        assert_eq!(back.v.to_host(&m2), opt.v.to_host(&m2));
        let e = load(dir.path(), &tiny(2), &dev).unwrap_err();
        assert!(format!("{e:#}").contains("do not match the model"), "{e:#}");
    }
}
