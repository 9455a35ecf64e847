//! From a llama.cpp `llama` GGUF to our Hugging Face Llama: the model
//! hyper-parameters ([`llama_config`]), tensor names ([`hf_tensor_name`]) and
//! the q/k row order ([`unpermute_qk`]).
//!
//! llama.cpp's `convert_hf_to_gguf.py` reorders the rows of every head of
//! `q_proj` and `k_proj` (its `permute`): HF's rotary embedding pairs
//! dimension `j` with `j + head_dim/2` (the "rotate half" layout), ggml's
//! pairs `2j` with `2j + 1`; so GGUF row `2j + t` of a head is HF row
//! `t × head_dim/2 + j`. `k_proj` is permuted with the key/value head count.
//!
//! Llama-3.1-style RoPE scaling is not in the metadata: the converter writes
//! the per-frequency divisors as a tensor `rope_freqs.weight`, which
//! [`llama_config`] maps back to [`RopeScaling::Llama3`].
use super::reader::{GgufFile, GgufHeader};
use super::GgufValue;
use crate::config::{DType, LlamaConfig, RopeScaling};
use crate::safetensors_io::HostTensor;
use anyhow::{bail, Context, Result};
use serde_json::Map;
use std::io::{Read, Seek};

/// The tensor of per-frequency RoPE divisors (Llama-3 scaling).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The Hugging Face name of a `llama` GGUF tensor, or `None` for a name
/// that has none (`rope_freqs.weight`, anything unknown).
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Reorders the rows of `t` (shape `[n_head × head_dim, ...]` or
/// `[n_head × head_dim]`) within each head by `row(head_dim, src)`: the row
/// written at position `dst` comes from `src_of(dst)`.
fn reorder_rows(
    t: &HostTensor,
    n_head: usize,
    what: &str,
    src_of: impl Fn(usize, usize) -> usize,
) -> Result<HostTensor> {
    let rows = *t
        .shape
        .first()
        .with_context(|| format!("{what}: a scalar has no rows"))?;
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        bail!("{what}: {rows} rows are not {n_head} heads of an even number of rows",);
    }
    let head_dim = rows / n_head;
    let row_len: usize = t.shape[1..].iter().product();
    if t.data.len() != rows * row_len {
        bail!(
            "{what}: {} values do not match shape {:?}",
            t.data.len(),
            t.shape
        );
    }
    let mut data = Vec::with_capacity(t.data.len());
    for h in 0..n_head {
        for dst in 0..head_dim {
            let src = h * head_dim + src_of(head_dim, dst);
            data.extend_from_slice(&t.data[src * row_len..(src + 1) * row_len]);
        }
    }
    Ok(HostTensor {
        shape: t.shape.clone(),
        data,
    })
}

/// Undoes llama.cpp's `permute` of a `q_proj` (with `n_head` = the
/// attention heads) or `k_proj` (with `n_head` = the key/value heads)
/// weight: GGUF row `2j + t` of a head becomes HF row `t × head_dim/2 + j`.
/// The tensor is row-major `[out, in]` as [`GgufFile::tensor_f32`] returns it.
pub fn unpermute_qk(t: &HostTensor, n_head: usize) -> Result<HostTensor> {
    // HF row dst = t·half + j comes from GGUF row 2j + t.
    reorder_rows(t, n_head, "unpermuting q/k rows", |d, dst| {
        let half = d / 2;
        2 * (dst % half) + dst / half
    })
}

/// llama.cpp's `permute` (HF → GGUF row order), the inverse of [`unpermute_qk`].
pub fn permute_qk(t: &HostTensor, n_head: usize) -> Result<HostTensor> {
    // GGUF row dst = 2j + t comes from HF row t·half + j.
    reorder_rows(t, n_head, "permuting q/k rows", |d, dst| {
        (dst % 2) * (d / 2) + dst / 2
    })
}

/// A number from the metadata as f64; an f32 becomes the f64 with the same
/// shortest decimal (1e-5f32 → 1e-5, as the HF config had it).
fn number(h: &GgufHeader, key: &str) -> Result<Option<f64>> {
    Ok(match h.get(key) {
        Some(GgufValue::F32(x)) => Some(format!("{x}").parse::<f64>().unwrap_or(f64::from(*x))),
        _ => h.get_f64(key)?,
    })
}

fn count(h: &GgufHeader, key: &str) -> Result<Option<usize>> {
    match h.get_u64(key)? {
        None => Ok(None),
        Some(n) => usize::try_from(n)
            .map(Some)
            .with_context(|| format!("GGUF metadata `{key}` = {n} is too large")),
    }
}

fn required(h: &GgufHeader, key: &str) -> Result<usize> {
    count(h, key)?.with_context(|| format!("GGUF metadata `{key}` is missing"))
}

fn token_id(h: &GgufHeader, key: &str) -> Result<Option<u32>> {
    match h.get_u64(key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .with_context(|| format!("GGUF metadata `{key}` = {n} is not a token id")),
    }
}

/// Recognises the Llama-3 scaling that `convert_hf_to_gguf.py` turned into
/// per-frequency divisors. The converter uses transformers' defaults (and
/// every Llama 3.1 / 3.2 / 3.3 checkpoint these values): low_freq_factor 1,
/// high_freq_factor 4, original context 8192; the factor is the largest divisor.
fn llama3_scaling(divisors: &[f32], head_dim: usize, rope_theta: f64) -> Result<RopeScaling> {
    if divisors.len() != head_dim / 2 {
        bail!(
            "`{ROPE_FREQS}` has {} values; head_dim {head_dim} needs {}",
            divisors.len(),
            head_dim / 2
        );
    }
    if divisors.iter().all(|&d| d == 1.0) {
        return Ok(RopeScaling::Default);
    }
    let factor = f64::from(divisors.iter().copied().fold(f32::MIN, f32::max));
    let (low, high, old) = (1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    for (i, &got) in divisors.iter().enumerate() {
        // As the converter: the frequencies in f32 (torch), the rest in f64 (Python).
        let exponent = (2 * i) as f32 / head_dim as f32;
        let freq = 1.0 / (rope_theta as f32).powf(exponent);
        let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
        let want = if wavelen < high_wavelen {
            1.0
        } else if wavelen > low_wavelen {
            factor
        } else {
            let smooth = (old / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        if (f64::from(got) - want).abs() > 1e-4 * want.abs().max(1.0) {
            bail!(
                "`{ROPE_FREQS}`[{i}] is {got}, but Llama-3 scaling (factor {factor}, low_freq_factor 1, high_freq_factor 4, original context 8192) gives {want}; other RoPE scalings are not supported"
            );
        }
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old,
    })
}

/// The [`LlamaConfig`] of a `llama` GGUF header. `rope_freqs` holds the
/// values of the `rope_freqs.weight` tensor when the file has one.
///
/// Read: `llama.{embedding_length, feed_forward_length, block_count,
/// context_length, vocab_size, attention.head_count, attention.head_count_kv,
/// attention.key_length, attention.value_length,
/// attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count,
/// rope.scaling.type, rope.scaling.factor}` and
/// `tokenizer.ggml.{bos,eos,padding}_token_id`; the vocabulary size falls
/// back to the length of `tokenizer.ggml.tokens`, then to the embedding's
/// rows. Embeddings are tied when there is no `output.weight`. The storage
/// dtype is f32 (the caller picks another for saving).
pub fn llama_config(h: &GgufHeader, rope_freqs: Option<&[f32]>) -> Result<LlamaConfig> {
    match h.get_str("general.architecture")? {
        Some("llama") => {}
        Some(other) => {
            bail!("GGUF `general.architecture` is {other:?}; only \"llama\" can be imported")
        }
        None => bail!("GGUF metadata `general.architecture` is missing"),
    }
    let k = |name: &str| format!("llama.{name}");
    let hidden_size = required(h, &k("embedding_length"))?;
    let num_attention_heads = required(h, &k("attention.head_count"))?;
    let num_key_value_heads =
        count(h, &k("attention.head_count_kv"))?.unwrap_or(num_attention_heads);
    if num_attention_heads == 0
        || num_key_value_heads == 0
        || num_attention_heads % num_key_value_heads != 0
    {
        bail!(
            "GGUF: {num_attention_heads} attention heads are not a multiple of {num_key_value_heads} key/value heads"
        );
    }
    let key_length = count(h, &k("attention.key_length"))?;
    let value_length = count(h, &k("attention.value_length"))?;
    if let (Some(kl), Some(vl)) = (key_length, value_length) {
        if kl != vl {
            bail!("GGUF: key_length {kl} differs from value_length {vl}; Llama needs them equal");
        }
    }
    let head_dim = key_length
        .or(value_length)
        .unwrap_or(hidden_size / num_attention_heads);
    if let Some(rot) = count(h, &k("rope.dimension_count"))? {
        if rot != head_dim {
            bail!(
                "GGUF: `llama.rope.dimension_count` is {rot} but head_dim is {head_dim}; partial rotary embeddings are not supported"
            );
        }
    }
    let rope_theta = number(h, &k("rope.freq_base"))?.unwrap_or(10000.0);
    let scaling_type = h.get_str(&k("rope.scaling.type"))?;
    let linear_factor = number(h, &k("rope.scaling.factor"))?;
    let mut rope_scaling = match (scaling_type, linear_factor) {
        (None | Some("none"), _) => RopeScaling::Default,
        (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
        (Some("linear"), None) => {
            bail!("GGUF: linear RoPE scaling without `llama.rope.scaling.factor`")
        }
        (Some(other), _) => bail!(
            "GGUF: RoPE scaling type {other:?} is not supported (supported: none, linear, and Llama-3 `{ROPE_FREQS}`)"
        ),
    };
    if let Some(divisors) = rope_freqs {
        let llama3 = llama3_scaling(divisors, head_dim, rope_theta)?;
        if llama3 != RopeScaling::Default {
            if rope_scaling != RopeScaling::Default {
                bail!("GGUF: both `llama.rope.scaling.type` and `{ROPE_FREQS}` scale RoPE");
            }
            rope_scaling = llama3;
        }
    }
    let embd = h.tensor("token_embd.weight");
    let vocab_size = match count(h, &k("vocab_size"))? {
        Some(n) => n,
        None => match h.get_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => embd
                .and_then(|t| t.dims.get(1))
                .map(|&n| n as usize)
                .context("GGUF: no `llama.vocab_size`, `tokenizer.ggml.tokens` or `token_embd.weight` gives the vocabulary size")?,
        },
    };
    if let Some(t) = embd {
        if t.dims != [hidden_size as u64, vocab_size as u64] {
            bail!(
                "GGUF: `token_embd.weight` has dims {:?}, expected [{hidden_size}, {vocab_size}] (hidden size, vocabulary)",
                t.dims
            );
        }
    }
    let cfg = LlamaConfig {
        hidden_size,
        intermediate_size: required(h, &k("feed_forward_length"))?,
        num_hidden_layers: required(h, &k("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: number(h, &k("attention.layer_norm_rms_epsilon"))?
            .context("GGUF metadata `llama.attention.layer_norm_rms_epsilon` is missing")?,
        rope_theta,
        rope_scaling,
        vocab_size,
        tie_word_embeddings: h.tensor("output.weight").is_none(),
        max_position_embeddings: count(h, &k("context_length"))?.unwrap_or(2048),
        bos_token_id: token_id(h, "tokenizer.ggml.bos_token_id")?,
        eos_token_ids: token_id(h, "tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect(),
        pad_token_id: token_id(h, "tokenizer.ggml.padding_token_id")?,
        dtype: DType::F32,
        extra: Map::new(),
    };
    if cfg.head_dim == 0 || !cfg.head_dim.is_multiple_of(2) {
        bail!(
            "GGUF: head_dim must be even and positive, got {}",
            cfg.head_dim
        );
    }
    cfg.validate().context("GGUF llama metadata")?;
    Ok(cfg)
}

/// [`llama_config`] of an open file, reading `rope_freqs.weight` if present.
pub fn llama_config_of<R: Read + Seek>(f: &mut GgufFile<R>) -> Result<LlamaConfig> {
    let freqs = match f.header().tensor(ROPE_FREQS) {
        Some(_) => Some(f.tensor_f32(ROPE_FREQS)?.data),
        None => None,
    };
    llama_config(f.header(), freqs.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_builder::{array, s, str_value, Builder};
    use std::io::Cursor;

    fn u32v(x: u32) -> Vec<u8> {
        x.to_le_bytes().to_vec()
    }

    fn f32v(x: f32) -> Vec<u8> {
        x.to_le_bytes().to_vec()
    }

    /// The metadata of a tiny llama: hidden 8, 2 heads, 16 ff, 1 layer.
    fn tiny() -> Builder {
        Builder::new()
            .kv("general.architecture", 8, &str_value("llama"))
            .kv("llama.embedding_length", 4, &u32v(8))
            .kv("llama.feed_forward_length", 4, &u32v(16))
            .kv("llama.block_count", 4, &u32v(1))
            .kv("llama.attention.head_count", 4, &u32v(2))
            .kv("llama.attention.layer_norm_rms_epsilon", 6, &f32v(1e-5))
    }

    fn header(b: Builder) -> GgufHeader {
        GgufFile::from_reader(Cursor::new(b.build()), "t.gguf")
            .unwrap()
            .header()
            .clone()
    }

    fn config_err(b: Builder) -> String {
        format!("{:#}", llama_config(&header(b), None).unwrap_err())
    }

    #[test]
    fn config_from_minimal_metadata() {
        let mut tokens = Vec::new();
        for t in ["a", "b", "c"] {
            s(&mut tokens, t);
        }
        let b = tiny()
            .kv("tokenizer.ggml.tokens", 9, &array(8, 3, &tokens))
            .kv("tokenizer.ggml.eos_token_id", 4, &u32v(2));
        let cfg = llama_config(&header(b), None).unwrap();
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_hidden_layers
            ),
            (8, 16, 1)
        );
        assert_eq!(
            (
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim
            ),
            (2, 2, 4)
        );
        assert_eq!(cfg.rms_norm_eps, 1e-5, "the f32 1e-5 reads as the f64 1e-5");
        assert_eq!(cfg.rope_theta, 10000.0);
        assert_eq!(cfg.rope_scaling, RopeScaling::Default);
        assert_eq!(cfg.vocab_size, 3, "from tokenizer.ggml.tokens");
        assert!(cfg.tie_word_embeddings, "no output.weight");
        assert_eq!(cfg.max_position_embeddings, 2048);
        assert_eq!(
            (cfg.bos_token_id, cfg.eos_token_ids.clone()),
            (None, vec![2])
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = config_err(Builder::new().kv("general.architecture", 8, &str_value("qwen2")));
        assert!(e.contains("\"qwen2\"; only \"llama\""), "{e}");
        let e = config_err(Builder::new().kv("general.architecture", 8, &str_value("llama")));
        assert!(e.contains("`llama.embedding_length` is missing"), "{e}");
        let e = config_err(tiny().kv("llama.vocab_size", 4, &u32v(5)).kv(
            "llama.rope.scaling.type",
            8,
            &str_value("yarn"),
        ));
        assert!(
            e.contains("RoPE scaling type \"yarn\" is not supported"),
            "{e}"
        );
        let e = config_err(tiny().kv("llama.vocab_size", 4, &u32v(5)).kv(
            "llama.attention.head_count_kv",
            9,
            &array(5, 1, &2i32.to_le_bytes()),
        ));
        assert!(
            e.contains(
                "`llama.attention.head_count_kv` should be a non-negative integer, but is ARRAY"
            ),
            "{e}"
        );
        let e = config_err(tiny().kv("llama.vocab_size", 4, &u32v(5)).kv(
            "llama.attention.head_count_kv",
            4,
            &u32v(3),
        ));
        assert!(
            e.contains("2 attention heads are not a multiple of 3"),
            "{e}"
        );
        let e = config_err(tiny());
        assert!(e.contains("vocabulary size"), "{e}");
        let e = config_err(tiny().kv("llama.vocab_size", 4, &u32v(5)).kv(
            "llama.rope.dimension_count",
            4,
            &u32v(2),
        ));
        assert!(e.contains("partial rotary"), "{e}");
    }

    #[test]
    fn rope_freqs_that_are_not_llama3_are_errors() {
        let h = header(tiny().kv("llama.vocab_size", 4, &u32v(5)));
        let cfg = llama_config(&h, Some(&[1.0, 1.0])).unwrap();
        assert_eq!(cfg.rope_scaling, RopeScaling::Default);
        let e = llama_config(&h, Some(&[1.0, 3.0])).unwrap_err().to_string();
        assert!(e.contains("`rope_freqs.weight`[1] is 3"), "{e}");
        let e = llama_config(&h, Some(&[1.0])).unwrap_err().to_string();
        assert!(e.contains("has 1 values; head_dim 4 needs 2"), "{e}");
    }

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // numpy: arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8, 1) = [0 2 1 3 4 6 5 7]
        let hf = HostTensor {
            shape: vec![8, 1],
            data: (0..8).map(|x| x as f32).collect(),
        };
        let gguf = permute_qk(&hf, 2).unwrap();
        assert_eq!(gguf.data, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_qk(&gguf, 2).unwrap(), hf);
        let big = HostTensor {
            shape: vec![24, 3],
            data: (0..72).map(|x| x as f32).collect(),
        };
        for heads in [1, 2, 3, 6] {
            assert_eq!(
                unpermute_qk(&permute_qk(&big, heads).unwrap(), heads).unwrap(),
                big
            );
        }
        let e = unpermute_qk(&big, 5).unwrap_err().to_string();
        assert!(e.contains("24 rows are not 5 heads"), "{e}");
        let e = unpermute_qk(&big, 8).unwrap_err().to_string();
        assert!(e.contains("an even number of rows"), "{e}");
    }

    #[test]
    fn tensor_names() {
        for (g, hf) in [
            ("token_embd.weight", Some("model.embed_tokens.weight")),
            ("output.weight", Some("lm_head.weight")),
            ("output_norm.weight", Some("model.norm.weight")),
            (
                "blk.11.attn_q.weight",
                Some("model.layers.11.self_attn.q_proj.weight"),
            ),
            (
                "blk.0.ffn_norm.weight",
                Some("model.layers.0.post_attention_layernorm.weight"),
            ),
            (
                "blk.0.ffn_down.weight",
                Some("model.layers.0.mlp.down_proj.weight"),
            ),
            ("rope_freqs.weight", None),
            ("blk.x.attn_q.weight", None),
            ("blk.0.attn_qkv.weight", None),
        ] {
            assert_eq!(hf_tensor_name(g).as_deref(), hf, "{g}");
        }
    }
}
