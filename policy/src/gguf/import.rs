//! `rlhf policy import --gguf FILE --out DIR`: a llama-family GGUF file as a
//! Hugging Face directory (config, generation config, tokenizer files, chat
//! template, safetensors weights) that our policy and transformers load.
//! Every tensor is dequantized to f32 ([`super::dequant`]), llama.cpp's row
//! permutation of `attn_q` / `attn_k` is undone, and the model is checked
//! (names, shapes) before anything is written; the directory is written
//! atomically, so a failure leaves nothing half-written.
use super::llama::{hf_tensor_name, llama_config_of, unpermute_qk, ROPE_FREQS};
use super::tokenizer::GgufTokenizer;
use super::GgufFile;
use crate::checkpoint::save_model;
use crate::config::{DType, LlamaConfig};
use crate::model::Llama;
use crate::tokenizer::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use anyhow::{bail, Context, Result};
use dfdx::prelude::Cpu;
use std::collections::BTreeMap;
use std::path::Path;

/// Imports `gguf` into the Hugging Face directory `out` with weights stored
/// in `dtype`; returns the model's configuration. `out` must be allowed by
/// the caller (see [`crate::out_dir::check`]).
pub fn import(gguf: &Path, out: &Path, dtype: DType) -> Result<LlamaConfig> {
    let mut f = GgufFile::open(gguf)?;
    let arch = f
        .header()
        .get_str("general.architecture")?
        .unwrap_or("(none)")
        .to_string();
    if arch != "llama" {
        bail!(
            "{}: architecture `{arch}` is not supported (the llama family only: Llama, Mistral-style, SmolLM, TinyLlama)",
            gguf.display()
        );
    }
    let cfg = llama_config_of(&mut f).with_context(|| format!("{}", gguf.display()))?;
    let tok = GgufTokenizer::from_header(f.header())?;
    let mut files = BTreeMap::new();
    files.insert(
        TOKENIZER_FILE.to_string(),
        serde_json::to_vec(&tok.tokenizer_json()?)?,
    );
    files.insert(
        TOKENIZER_CONFIG_FILE.to_string(),
        serde_json::to_vec_pretty(&tok.tokenizer_config()?)?,
    );
    let infos = f.header().tensors().to_vec();
    let mut tensors = BTreeMap::new();
    for info in &infos {
        if info.name == ROPE_FREQS {
            continue; // part of the configuration (Llama-3 RoPE scaling)
        }
        let name = hf_tensor_name(&info.name).with_context(|| {
            format!(
                "{}: tensor `{}` is not part of a llama model",
                gguf.display(),
                info.name
            )
        })?;
        let t = f
            .tensor_f32(&info.name)
            .with_context(|| format!("{}: tensor `{}`", gguf.display(), info.name))?;
        let t = if info.name.ends_with(".attn_q.weight") {
            unpermute_qk(&t, cfg.num_attention_heads)?
        } else if info.name.ends_with(".attn_k.weight") {
            unpermute_qk(&t, cfg.num_key_value_heads)?
        } else {
            t
        };
        tensors.insert(name, t);
    }
    // names and shapes are checked here, before anything is written
    let model = Llama::from_tensors(cfg.clone(), tensors, &Cpu::default())
        .with_context(|| format!("{}: the tensors do not make a llama model", gguf.display()))?;
    save_model(&model, None, &files, out, dtype)?;
    Ok(cfg)
}
