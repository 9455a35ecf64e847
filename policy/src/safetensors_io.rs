//! Safetensors I/O in Hugging Face's layout: one `model.safetensors` or
//! shards plus `model.safetensors.index.json`; f32/bf16/f16 on disk, f32 in
//! memory.
use crate::config::DType;
// Callers outside the crate reach these through `policy::safetensors_io`.
use crate::fs_atomic::write_file_synced;
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype as StDtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A host tensor: row-major f32 data and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Converts an f32 to bf16 bits, rounding to nearest even (as torch does).
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn decode(view: &TensorView<'_>, name: &str) -> Result<Vec<f32>> {
    let bytes = view.data();
    let out: Vec<f32> = match view.dtype() {
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        other => bail!("tensor `{name}` has dtype {other:?}; only F32, BF16 and F16 are supported"),
    };
    Ok(out)
}

/// Reads every tensor of a checkpoint directory (single file or sharded).
pub fn read_dir_tensors(dir: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: missing `weight_map`", index.display()))?;
        let mut shards: Vec<String> = map
            .values()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .context("weight_map values must be file names")
            })
            .collect::<Result<_>>()?;
        shards.sort();
        shards.dedup();
        for s in &shards {
            if s.contains('/') || s.contains("..") {
                bail!(
                    "{}: shard name {s:?} must be a plain file name",
                    index.display()
                );
            }
        }
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        bail!(
            "{} has no model.safetensors nor model.safetensors.index.json (PyTorch .bin checkpoints are not supported; convert with transformers' save_pretrained(safe_serialization=True))",
            dir.display()
        );
    };
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", f.display()))?;
        for (name, view) in st.tensors() {
            let data = decode(&view, &name).with_context(|| format!("in {}", f.display()))?;
            if out
                .insert(
                    name.clone(),
                    HostTensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                )
                .is_some()
            {
                bail!("tensor `{name}` appears in more than one shard");
            }
        }
    }
    Ok(out)
}

fn encode(t: &HostTensor, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t
            .data
            .iter()
            .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
            .collect(),
        DType::F16 => t
            .data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
    }
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
    }
}

/// Writes tensors into `dir` as HF does: `model.safetensors`, or shards of at
/// most `max_shard_bytes` plus an index when they do not fit in one.
pub fn write_tensors(
    dir: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<()> {
    let encoded: Vec<(&String, &HostTensor, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n, t, encode(t, dtype)))
        .collect();
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0usize;
    for (i, (_, _, bytes)) in encoded.iter().enumerate() {
        if size > 0 && size + bytes.len() > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().unwrap().push(i);
        size += bytes.len();
    }
    let metadata: Option<HashMap<String, String>> =
        Some([("format".to_string(), "pt".to_string())].into());
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (si, shard) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, n)
        };
        let views: Vec<(String, TensorView<'_>)> = shard
            .iter()
            .map(|&i| {
                let (name, t, bytes) = &encoded[i];
                weight_map.insert((*name).clone(), json!(file));
                Ok((
                    (*name).clone(),
                    TensorView::new(st_dtype(dtype), t.shape.clone(), bytes)?,
                ))
            })
            .collect::<Result<_>>()?;
        let data = safetensors::serialize(views, &metadata)?;
        write_file_synced(&dir.join(&file), &data)?;
    }
    if n > 1 {
        let total: usize = encoded.iter().map(|e| e.2.len()).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_file_synced(
            &dir.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values; ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), f32_to_bf16(1.0));
        assert_eq!(half::bf16::from_bits(f32_to_bf16(3.0)).to_f32(), 3.0);
    }

    #[test]
    fn sharded_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut m = BTreeMap::new();
        for i in 0..5 {
            m.insert(
                format!("t{i}"),
                HostTensor {
                    shape: vec![2, 3],
                    data: (0..6).map(|x| (x + i) as f32 * 0.5).collect(),
                },
            );
        }
        write_tensors(d.path(), &m, DType::F32, 50).unwrap();
        assert!(d.path().join("model.safetensors.index.json").exists());
        assert_eq!(read_dir_tensors(d.path()).unwrap(), m);
        let d2 = tempfile::tempdir().unwrap();
        write_tensors(d2.path(), &m, DType::BF16, usize::MAX).unwrap();
        assert_eq!(read_dir_tensors(d2.path()).unwrap(), m); // values are exact in bf16
    }

    #[test]
    fn garbage_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("model.safetensors"),
            b"not a safetensors file",
        )
        .unwrap();
        let e = read_dir_tensors(d.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a valid safetensors"),
            "{e:#}"
        );
    }
}
