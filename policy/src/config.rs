//! `LlamaConfig`: the Hugging Face `config.json` of a Llama checkpoint.
//!
//! Every field HF's `LlamaConfig` uses is read; values we cannot compute
//! faithfully (another architecture, bias terms, an unknown RoPE type) are
//! rejected with an error naming the field, rather than silently computing
//! something else.
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Storage dtype of checkpoint tensors. Compute is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    /// Parses `float32` / `bfloat16` / `float16` (and `torch.`-prefixed spellings).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim_start_matches("torch.") {
            "float32" | "f32" | "fp32" => Ok(DType::F32),
            "bfloat16" | "bf16" => Ok(DType::BF16),
            "float16" | "f16" | "fp16" | "half" => Ok(DType::F16),
            other => bail!("unsupported dtype {other:?} (expected float32, bfloat16 or float16)"),
        }
    }

    /// The name HF writes in `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
}

/// Rotary-embedding frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: frequencies divided by `factor`.
    Linear { factor: f64 },
    /// Llama-3.1 wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The model hyper-parameters of a HF Llama checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids; HF allows a single id or a list.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub dtype: DType,
    /// Fields we do not interpret, kept so that a save writes them back.
    pub extra: Map<String, Value>,
}

fn get_usize(m: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).with_context(|| {
            format!("config.json: field `{key}` must be a non-negative integer, got {v}")
        }),
    }
}

fn req_usize(m: &Map<String, Value>, key: &str) -> Result<usize> {
    get_usize(m, key)?.with_context(|| format!("config.json: missing required field `{key}`"))
}

fn get_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .with_context(|| format!("config.json: field `{key}` must be a number, got {v}")),
    }
}

fn get_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .with_context(|| format!("config.json: field `{key}` must be true or false, got {v}")),
    }
}

fn get_ids(m: &Map<String, Value>, key: &str) -> Result<Vec<u32>> {
    let bad = || format!("config.json: field `{key}` must be a token id or a list of token ids");
    match m.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().map(|x| x as u32).with_context(bad))
            .collect(),
        Some(v) => Ok(vec![v.as_u64().with_context(bad)? as u32]),
    }
}

/// Keys this module interprets (everything else lands in `extra`).
const KNOWN: &[&str] = &[
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "architectures",
    "model_type",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
];

fn parse_rope(obj: &Map<String, Value>, field: &str) -> Result<RopeScaling> {
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        get_f64(obj, k)?.with_context(|| {
            format!("config.json: `{field}.{k}` is required for rope type {kind:?}")
        })
    };
    Ok(match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => bail!(
            "config.json: `{field}` has rope type {other:?}, which is not supported (supported: default, linear, llama3)"
        ),
    })
}

impl LlamaConfig {
    /// Reads `config.json` from a checkpoint directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&v).with_context(|| format!("invalid {}", path.display()))
    }

    /// Parses the JSON object of a HF Llama `config.json`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let m = v.as_object().context("config.json must be a JSON object")?;
        if let Some(t) = m.get("model_type").and_then(Value::as_str) {
            if t != "llama" {
                bail!("config.json: field `model_type` is {t:?}; only \"llama\" is supported");
            }
        }
        if let Some(Value::Array(archs)) = m.get("architectures") {
            for a in archs {
                let a = a.as_str().unwrap_or_default();
                if !a.starts_with("Llama") {
                    bail!("config.json: field `architectures` names {a:?}; only Llama architectures are supported");
                }
            }
        }
        if let Some(act) = m.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!("config.json: field `hidden_act` is {act:?}; Llama uses \"silu\"");
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if get_bool(m, key)? == Some(true) {
                bail!("config.json: field `{key}` is true; bias terms are not supported");
            }
        }
        let hidden_size = req_usize(m, "hidden_size")?;
        let num_attention_heads = req_usize(m, "num_attention_heads")?;
        let num_key_value_heads =
            get_usize(m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            bail!(
                "config.json: `num_attention_heads` ({num_attention_heads}) must be a positive multiple of `num_key_value_heads` ({num_key_value_heads})"
            );
        }
        let head_dim = get_usize(m, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            bail!("config.json: `head_dim` must be even and positive, got {head_dim}");
        }
        // transformers 5 moved rope_theta and the scaling into `rope_parameters`.
        let (rope_theta, rope_scaling) = match m.get("rope_parameters") {
            Some(Value::Object(p)) => (
                get_f64(p, "rope_theta")?
                    .or(get_f64(m, "rope_theta")?)
                    .unwrap_or(10000.0),
                parse_rope(p, "rope_parameters")?,
            ),
            Some(Value::Null) | None => {
                let scaling = match m.get("rope_scaling") {
                    Some(Value::Object(s)) => parse_rope(s, "rope_scaling")?,
                    Some(Value::Null) | None => RopeScaling::Default,
                    Some(other) => bail!(
                        "config.json: field `rope_scaling` must be an object or null, got {other}"
                    ),
                };
                (get_f64(m, "rope_theta")?.unwrap_or(10000.0), scaling)
            }
            Some(other) => {
                bail!("config.json: field `rope_parameters` must be an object, got {other}")
            }
        };
        let dtype = match m
            .get("dtype")
            .or_else(|| m.get("torch_dtype"))
            .and_then(Value::as_str)
        {
            Some(s) => DType::parse(s).context("config.json: field `torch_dtype`/`dtype`")?,
            None => DType::F32,
        };
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: req_usize(m, "intermediate_size")?,
            num_hidden_layers: req_usize(m, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(m, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            vocab_size: req_usize(m, "vocab_size")?,
            tie_word_embeddings: get_bool(m, "tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: get_usize(m, "max_position_embeddings")?.unwrap_or(2048),
            bos_token_id: get_ids(m, "bos_token_id")?.first().copied(),
            eos_token_ids: get_ids(m, "eos_token_id")?,
            pad_token_id: get_ids(m, "pad_token_id")?.first().copied(),
            dtype,
            extra: m
                .iter()
                .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail!("config.json: `{name}` must be positive");
            }
        }
        for id in self
            .eos_token_ids
            .iter()
            .chain(self.bos_token_id.iter())
            .chain(self.pad_token_id.iter())
        {
            if *id as usize >= self.vocab_size {
                bail!(
                    "config.json: special token id {id} is outside the vocabulary ({})",
                    self.vocab_size
                );
            }
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The rotary inverse frequencies (length head_dim / 2), computed as HF does (f32).
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta as f32;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        match self.rope_scaling {
            RopeScaling::Default => inv,
            RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, lo, hi, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let low_freq_wavelen = old / lo;
                let high_freq_wavelen = old / hi;
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                        if medium {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// The JSON HF writes for this config (transformers-4 spelling, which
    /// transformers 5 also reads).
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let fields = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.dtype.hf_name(),
        });
        for (k, v) in fields.as_object().unwrap() {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let layer = d * q * 2 + d * kv * 2 + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * layer + d + head
    }
}

/// So clap parses `--dtype` (float32, bfloat16, float16, and their short names).
impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DType::parse(s).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 100})
    }

    #[test]
    fn defaults_follow_hf() {
        let c = LlamaConfig::from_json(&base()).unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn rope_scaling_spellings() {
        let mut a = base();
        a["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        assert_eq!(
            LlamaConfig::from_json(&a).unwrap().rope_scaling,
            RopeScaling::Linear { factor: 2.0 }
        );
        let mut b = base();
        b["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = LlamaConfig::from_json(&b).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        let mut d = base();
        d["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
        let e = LlamaConfig::from_json(&d).unwrap_err().to_string();
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
    }

    #[test]
    fn rejects_unsupported_fields_by_name() {
        let mut a = base();
        a["attention_bias"] = json!(true);
        assert!(LlamaConfig::from_json(&a)
            .unwrap_err()
            .to_string()
            .contains("attention_bias"));
        let mut b = base();
        b["model_type"] = json!("mistral");
        assert!(LlamaConfig::from_json(&b)
            .unwrap_err()
            .to_string()
            .contains("model_type"));
        let mut c = base();
        c.as_object_mut().unwrap().remove("vocab_size");
        assert!(LlamaConfig::from_json(&c)
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
        let mut d = base();
        d["eos_token_id"] = json!([1, 2]);
        d["dtype"] = json!("bfloat16");
        let c = LlamaConfig::from_json(&d).unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.dtype, DType::BF16);
    }

    #[test]
    fn json_round_trip() {
        let mut a = base();
        a["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        a["eos_token_id"] = json!([3, 4]);
        a["custom"] = json!("kept");
        let c = LlamaConfig::from_json(&a).unwrap();
        let back = LlamaConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(c, back);
        assert_eq!(c.to_json()["custom"], "kept");
    }
}
