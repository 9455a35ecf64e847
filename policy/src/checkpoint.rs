//! Checkpoints are Hugging Face model directories: `config.json`,
//! `generation_config.json`, `model.safetensors` (or shards + index) and the
//! tokenizer files, loaded and saved exactly.
use crate::config::{DType, LlamaConfig};
use crate::fs_atomic::{write_dir_atomic, write_file_synced};
use crate::model::{Dev, Llama};
use crate::safetensors_io::{read_dir_tensors, write_tensors};
use crate::tokenizer::TOKENIZER_FILES;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest shard written before splitting, as transformers' `max_shard_size`.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// A loaded checkpoint: the model plus the files that travel with it.
pub struct Checkpoint<D: Dev> {
    pub model: Llama<D>,
    /// `generation_config.json`, if the checkpoint has one.
    pub generation_config: Option<Value>,
    /// Tokenizer files by name, copied verbatim on save.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl<D: Dev> Checkpoint<D> {
    /// Loads a HF Llama directory onto `dev`.
    pub fn load(dir: &Path, dev: &D) -> Result<Self> {
        if !dir.is_dir() {
            anyhow::bail!("{} is not a directory", dir.display());
        }
        let cfg = LlamaConfig::load(dir)?;
        let tensors = read_dir_tensors(dir)?;
        let model = Llama::from_tensors(cfg, tensors, dev)
            .with_context(|| format!("cannot load weights from {}", dir.display()))?;
        let gen_path = dir.join("generation_config.json");
        let generation_config = if gen_path.exists() {
            let text = std::fs::read_to_string(&gen_path)?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", gen_path.display()))?,
            )
        } else {
            None
        };
        let files = read_tokenizer_files(dir)?;
        Ok(Checkpoint {
            model,
            generation_config,
            files,
        })
    }

    /// Saves atomically as a HF directory with weights in `dtype`.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<()> {
        save_model(
            &self.model,
            self.generation_config.as_ref(),
            &self.files,
            dir,
            dtype,
        )
    }

    /// End-of-sequence ids: generation_config's, else config's.
    pub fn eos_ids(&self) -> Vec<u32> {
        let from_gen: Vec<u32> = match self
            .generation_config
            .as_ref()
            .and_then(|g| g.get("eos_token_id"))
        {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|x| x as u32))
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => vec![],
        };
        if from_gen.is_empty() {
            self.model.cfg.eos_token_ids.clone()
        } else {
            from_gen
        }
    }
}

/// The tokenizer files of a checkpoint directory, by name, to copy verbatim on save.
pub fn read_tokenizer_files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for f in TOKENIZER_FILES {
        let p = dir.join(f);
        if p.is_file() {
            files.insert(
                f.to_string(),
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            );
        }
    }
    Ok(files)
}

/// Saves a model as a HF directory, atomically.
pub fn save_model<D: Dev>(
    model: &Llama<D>,
    generation_config: Option<&Value>,
    files: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    dtype: DType,
) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        write_model_into(model, generation_config, files, tmp, dtype)
    })
    .with_context(|| format!("cannot save checkpoint to {}", dir.display()))
}

/// Writes a model's HF files (config, generation config, tokenizer files,
/// weights in `dtype`) into the existing directory `dir` (for callers that
/// add more files to the same atomic write, such as a training state).
pub fn write_model_into<D: Dev>(
    model: &Llama<D>,
    generation_config: Option<&Value>,
    files: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    dtype: DType,
) -> Result<()> {
    let mut cfg = model.cfg.clone();
    cfg.dtype = dtype;
    write_file_synced(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_json())?.as_bytes(),
    )?;
    let gen = generation_config.cloned().unwrap_or_else(|| {
        json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids, "pad_token_id": cfg.pad_token_id})
    });
    write_file_synced(
        &dir.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)?.as_bytes(),
    )?;
    for (name, bytes) in files {
        write_file_synced(&dir.join(name), bytes)?;
    }
    write_tensors(
        dir,
        &model.to_host_tensors(),
        dtype,
        DEFAULT_MAX_SHARD_BYTES,
    )
}
