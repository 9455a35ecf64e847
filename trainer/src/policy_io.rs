//! What travels with a policy checkpoint besides its weights (generation
//! config, tokenizer files), so every stage writes a complete HF directory.
use anyhow::{Context, Result};
use policy::checkpoint::{write_model_into, Checkpoint};
use policy::config::DType;
use policy::model::{Dev, Llama};
use policy::tokenizer::Tokenizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The non-weight files of a policy checkpoint.
#[derive(Clone, Debug, Default)]
pub struct PolicyFiles {
    pub generation_config: Option<Value>,
    /// Tokenizer files by name, copied verbatim.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl PolicyFiles {
    /// The files of a loaded checkpoint.
    pub fn of<D: Dev>(ck: &Checkpoint<D>) -> Self {
        PolicyFiles {
            generation_config: ck.generation_config.clone(),
            files: ck.files.clone(),
        }
    }

    /// Writes `model` with these files into the existing directory `dir`.
    pub fn write_into<D: Dev>(&self, model: &Llama<D>, dir: &Path, dtype: DType) -> Result<()> {
        write_model_into(
            model,
            self.generation_config.as_ref(),
            &self.files,
            dir,
            dtype,
        )
    }
}

/// Loads a policy checkpoint and its tokenizer.
pub fn load_policy<D: Dev>(dir: &Path, dev: &D) -> Result<(Checkpoint<D>, Tokenizer)> {
    let ck = Checkpoint::load(dir, dev)?;
    let tok = Tokenizer::load(dir)
        .with_context(|| format!("{} has no usable tokenizer (tokenizer.json)", dir.display()))?;
    Ok((ck, tok))
}
