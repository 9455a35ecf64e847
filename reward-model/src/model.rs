//! The reward model: the policy's Llama backbone plus a scalar head
//! (`score.weight`, `[1, hidden]`) read at the last real token of each row,
//! stored as a Hugging Face `LlamaForSequenceClassification` directory plus
//! our reward normalization.
use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use policy::checkpoint::read_tokenizer_files;
use policy::config::{DType, LlamaConfig};
use policy::fs_atomic::{write_dir_atomic, write_file_synced};
use policy::model::{Batch, Dev, Llama, ParamMut, ParamRef, T1, T2};
use policy::safetensors_io::{read_dir_tensors, write_tensors, HostTensor};
use policy::train::HasParams;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the normalization file next to the weights.
pub const NORMALIZATION_FILE: &str = "reward_normalization.json";

/// HF name of the head.
pub const SCORE_WEIGHT: &str = "score.weight";

/// Affine reward normalization: `normalized = gain · raw + bias`, fitted so
/// rewards on a reference set have mean 0 and std 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub gain: f32,
    pub bias: f32,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            gain: 1.0,
            bias: 0.0,
        }
    }
}

impl Normalization {
    /// Fits gain and bias so `raw` maps to mean 0, std 1 (population std).
    /// A constant reference set (std 0) keeps gain 1 and only centers.
    pub fn fit(raw: &[f32]) -> Result<Self> {
        if raw.is_empty() {
            bail!("cannot fit the reward normalization on an empty reference set");
        }
        let n = raw.len() as f64;
        let mean = raw.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = raw.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        let gain = if std > 1e-8 { 1.0 / std } else { 1.0 };
        Ok(Normalization {
            gain: gain as f32,
            bias: (-mean * gain) as f32,
        })
    }

    /// Applies the normalization.
    pub fn apply(&self, raw: f32) -> f32 {
        self.gain * raw + self.bias
    }
}

/// A Llama reward model on device `D`.
#[derive(Clone, Debug)]
pub struct RewardModel<D: Dev> {
    /// The transformer without LM head.
    pub backbone: Llama<D>,
    /// The scalar head, `[1, hidden]` (HF `score.weight`, no bias).
    pub score: T2<D>,
    /// Applied by [`RewardModel::rewards`]; raw scores ignore it.
    pub normalization: Normalization,
    /// Tokenizer files by name, copied verbatim on save.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl<D: Dev> HasParams<D> for RewardModel<D> {
    fn params(&self) -> Vec<(String, ParamRef<'_, D>)> {
        let mut p = self.backbone.params();
        p.push((SCORE_WEIGHT.to_string(), ParamRef::Matrix(&self.score)));
        p
    }
    fn params_mut(&mut self) -> Vec<ParamMut<'_, D>> {
        let mut p = self.backbone.params_mut();
        p.push(ParamMut::Matrix(&mut self.score));
        p
    }
}

/// Index of the last real token of each row, from the key mask (never from
/// comparing ids with the pad token: when pad == EOS, a sequence ending in
/// EOS would otherwise be read one token early — or at its first EOS).
pub fn last_token_indices(b: &Batch) -> Result<Vec<usize>> {
    if b.key_mask.len() != b.batch * b.seq {
        bail!(
            "batch key mask has {} entries for {}x{} tokens (a KV-cached batch cannot be scored)",
            b.key_mask.len(),
            b.batch,
            b.seq
        );
    }
    (0..b.batch)
        .map(|r| {
            let row = &b.key_mask[r * b.seq..(r + 1) * b.seq];
            let last = row
                .iter()
                .rposition(|&m| m)
                .with_context(|| format!("row {r} has no real token"))?;
            Ok(r * b.seq + last)
        })
        .collect()
}

impl<D: Dev> RewardModel<D> {
    /// A new reward model on a backbone: the head is drawn from
    /// N(0, `init_std`²) with `seed` (HF initializes it with
    /// `initializer_range`, 0.02).
    pub fn from_backbone(backbone: Llama<D>, seed: u64, init_std: f32) -> Result<Self> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        if !(init_std.is_finite() && init_std >= 0.0) {
            bail!("head init std must be a non-negative number, got {init_std}");
        }
        let d = backbone.cfg.hidden_size;
        let mut rng = StdRng::seed_from_u64(seed);
        // Box–Muller keeps this independent of rand_distr's version.
        let data: Vec<f32> = (0..d)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                    * init_std
            })
            .collect();
        let score = backbone.dev.tensor_from_vec(data, (1, d));
        Ok(RewardModel {
            backbone,
            score,
            normalization: Normalization::default(),
            files: BTreeMap::new(),
        })
    }

    /// Loads a reward-model directory written by [`RewardModel::save`] or by
    /// transformers' `LlamaForSequenceClassification.save_pretrained`.
    pub fn load(dir: &Path, dev: &D) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let cfg = LlamaConfig::load(dir)?;
        if let Some(n) = cfg.extra.get("num_labels").and_then(Value::as_u64) {
            if n != 1 {
                bail!(
                    "{}: num_labels is {n}; a reward model has exactly 1",
                    dir.display()
                );
            }
        }
        let mut tensors = read_dir_tensors(dir)?;
        let head = tensors
            .remove(SCORE_WEIGHT)
            .with_context(|| format!("{} has no `{SCORE_WEIGHT}`: not a reward model (to start one from a policy checkpoint, use RewardModel::from_policy)", dir.display()))?;
        if head.shape != [1, cfg.hidden_size] {
            bail!(
                "`{SCORE_WEIGHT}` has shape {:?}, expected [1, {}]",
                head.shape,
                cfg.hidden_size
            );
        }
        if head.data.iter().any(|x| !x.is_finite()) {
            bail!("`{SCORE_WEIGHT}` contains a non-finite value");
        }
        let d = cfg.hidden_size;
        let backbone = Llama::backbone_from_tensors(cfg, tensors, dev)
            .with_context(|| format!("cannot load the backbone from {}", dir.display()))?;
        let normalization = read_normalization(dir)?.unwrap_or_default();
        Ok(RewardModel {
            backbone,
            score: dev.tensor_from_vec(head.data, (1, d)),
            normalization,
            files: read_tokenizer_files(dir)?,
        })
    }

    /// Starts a reward model from a causal-LM checkpoint (e.g. the SFT
    /// policy, as Llama-2 did): its backbone, a fresh head, its tokenizer.
    pub fn from_policy(dir: &Path, dev: &D, seed: u64) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let cfg = LlamaConfig::load(dir)?;
        let tensors = read_dir_tensors(dir)?;
        let backbone = Llama::backbone_from_tensors(cfg, tensors, dev)
            .with_context(|| format!("cannot load the backbone from {}", dir.display()))?;
        let mut rm = Self::from_backbone(backbone, seed, 0.02)?;
        rm.files = read_tokenizer_files(dir)?;
        Ok(rm)
    }

    /// [`RewardModel::load`] when `dir` holds a reward model (`score.weight`),
    /// else [`RewardModel::from_policy`].
    pub fn load_or_init(dir: &Path, dev: &D, seed: u64) -> Result<Self> {
        let tensors = read_dir_tensors(dir)
            .with_context(|| format!("cannot read weights from {}", dir.display()))?;
        if tensors.contains_key(SCORE_WEIGHT) {
            Self::load(dir, dev)
        } else {
            Self::from_policy(dir, dev, seed)
        }
    }

    /// The pad id used for batching: the config's, else the first EOS, else 0.
    /// Any id does, since the scored token comes from the mask.
    pub fn pad_id(&self) -> u32 {
        let c = &self.backbone.cfg;
        c.pad_token_id
            .or_else(|| c.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    /// The pad token written to `config.json` (and as `pad_token` to
    /// `tokenizer_config.json`): transformers' `LlamaForSequenceClassification`
    /// scores the rightmost token that is *not* the pad id, so a pad equal to
    /// EOS would make it score the token before a final EOS. The pad must be
    /// a token that never ends a scored sequence: the config's pad if it is no
    /// EOS/BOS, else a special token of the tokenizer that is no end marker (a
    /// pad, reserved or unknown token first), else the last id of the vocabulary.
    pub fn export_pad(&self) -> (u32, Option<String>) {
        let c = &self.backbone.cfg;
        let tokens = special_tokens(&self.files);
        let id_of = |content: &str| tokens.iter().find(|t| t.1 == content).map(|t| t.0);
        let mut ends: Vec<u32> = c.eos_token_ids.clone();
        ends.extend(c.bos_token_id);
        for attr in ["eos_token", "bos_token"] {
            ends.extend(tokenizer_config_token(&self.files, attr).and_then(|t| id_of(&t)));
        }
        if let Some(p) = c.pad_token_id.filter(|p| !ends.contains(p)) {
            return (p, tokens.iter().find(|t| t.0 == p).map(|t| t.1.clone()));
        }
        let usable = |t: &&(u32, String)| {
            let l = t.1.to_lowercase();
            !ends.contains(&t.0)
                && (t.0 as usize) < c.vocab_size
                && !["eot", "end", "eos", "</s>", "stop"]
                    .iter()
                    .any(|m| l.contains(m))
        };
        let pick = ["pad", "reserved", "unk", ""].iter().find_map(|want| {
            tokens
                .iter()
                .filter(usable)
                .find(|t| t.1.to_lowercase().contains(want))
        });
        match pick {
            Some(t) => (t.0, Some(t.1.clone())),
            None => {
                let last = (c.vocab_size as u32).saturating_sub(1);
                (last, None)
            }
        }
    }

    /// The HF `config.json` of this model.
    pub fn hf_config(&self, dtype: DType) -> Value {
        self.config_with_pad(dtype, self.export_pad().0)
    }

    /// `config.json` with `pad` as its pad id ([`RewardModel::export_pad`]).
    fn config_with_pad(&self, dtype: DType, pad: u32) -> Value {
        let mut cfg = self.backbone.cfg.clone();
        cfg.dtype = dtype;
        cfg.pad_token_id = Some(pad);
        let mut v = cfg.to_json();
        let m = v.as_object_mut().expect("config JSON is an object");
        m.insert(
            "architectures".into(),
            json!(["LlamaForSequenceClassification"]),
        );
        m.insert("num_labels".into(), json!(1));
        m.insert("id2label".into(), json!({"0": "LABEL_0"}));
        m.insert("label2id".into(), json!({"LABEL_0": 0}));
        // Regression on one score, as TRL's RewardTrainer saves it.
        m.remove("problem_type");
        v
    }

    /// The weights under their HF names (`model.*`, `score.weight`).
    pub fn to_host_tensors(&self) -> BTreeMap<String, HostTensor> {
        let mut t = self.backbone.to_host_tensors();
        t.insert(
            SCORE_WEIGHT.to_string(),
            HostTensor {
                shape: vec![1, self.backbone.cfg.hidden_size],
                data: self.score.as_vec(),
            },
        );
        t
    }

    /// Writes the directory contents (config, weights, tokenizer files,
    /// normalization) into an existing directory `dir`.
    pub fn write_into(&self, dir: &Path, dtype: DType) -> Result<()> {
        // parses the tokenizer files: once per save
        let (pad_id, pad) = self.export_pad();
        write_file_synced(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&self.config_with_pad(dtype, pad_id))?.as_bytes(),
        )?;
        for (name, bytes) in &self.files {
            let bytes = match (name.as_str(), &pad) {
                ("tokenizer_config.json", Some(p)) => with_pad_token(bytes, p)?,
                _ => bytes.clone(),
            };
            write_file_synced(&dir.join(name), &bytes)?;
        }
        write_normalization(dir, &self.normalization)?;
        write_tensors(
            dir,
            &self.to_host_tensors(),
            dtype,
            policy::checkpoint::DEFAULT_MAX_SHARD_BYTES,
        )
    }

    /// Saves atomically as a HF `LlamaForSequenceClassification` directory.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<()> {
        write_dir_atomic(dir, |tmp| self.write_into(tmp, dtype))
            .with_context(|| format!("cannot save the reward model to {}", dir.display()))
    }

    /// Raw scores `(batch,)` of a batch, differentiable: pass
    /// `embed_tokens.trace(grads)` as `embed` to train, `embed_tokens.clone()`
    /// to score.
    pub fn forward<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        embed: T2<D, T>,
        b: &Batch,
    ) -> Result<T1<D, T>> {
        let last = last_token_indices(b)?;
        let h = self.backbone.hidden(embed, b, None)?;
        let idx = self.backbone.dev.tensor_from_vec(last, (b.batch,));
        let picked = h.gather(idx); // (batch, hidden)
        let s = picked.matmul(self.score.clone().permute::<(usize, usize), Axes2<1, 0>>()); // (batch, 1)
        Ok(s.reshape_like(&(b.batch,)))
    }

    /// Raw scores of token sequences, in batches of `batch_size` rows
    /// (similar lengths together, results in input order).
    pub fn raw_scores(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<f32>> {
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            bail!("sequence {i} is empty; a reward needs at least one token");
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![0f32; seqs.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
            let b = Batch::right_padded(&rows, self.pad_id())?;
            let s = self
                .forward(self.backbone.embed_tokens.clone(), &b)?
                .as_vec();
            for (&i, v) in chunk.iter().zip(s) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Normalized rewards of token sequences (the library API the trainer uses).
    pub fn rewards(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<f32>> {
        Ok(self
            .raw_scores(seqs, batch_size)?
            .into_iter()
            .map(|r| self.normalization.apply(r))
            .collect())
    }
}

/// `(id, content)` of the special added tokens in `tokenizer.json`, by id.
fn special_tokens(files: &BTreeMap<String, Vec<u8>>) -> Vec<(u32, String)> {
    let Some(v) = files
        .get("tokenizer.json")
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
    else {
        return vec![];
    };
    let mut out: Vec<(u32, String)> = v["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["special"].as_bool().unwrap_or(false))
        .filter_map(|t| Some((t["id"].as_u64()? as u32, t["content"].as_str()?.to_string())))
        .collect();
    out.sort();
    out
}

/// A special token named in `tokenizer_config.json` (a string or `{"content": …}`).
fn tokenizer_config_token(files: &BTreeMap<String, Vec<u8>>, attr: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(files.get("tokenizer_config.json")?).ok()?;
    let t = &v[attr];
    t.as_str()
        .or_else(|| t["content"].as_str())
        .map(str::to_string)
}

/// `tokenizer_config.json` with `pad_token` set, so a data collator pads with
/// the id `config.json` names.
fn with_pad_token(bytes: &[u8], pad: &str) -> Result<Vec<u8>> {
    let mut v: Value =
        serde_json::from_slice(bytes).context("tokenizer_config.json is not valid JSON")?;
    let m = v
        .as_object_mut()
        .context("tokenizer_config.json is not a JSON object")?;
    m.insert("pad_token".into(), json!(pad));
    Ok(serde_json::to_vec_pretty(&v)?)
}

/// Reads `reward_normalization.json` from `dir`, if present.
pub fn read_normalization(dir: &Path) -> Result<Option<Normalization>> {
    let p = dir.join(NORMALIZATION_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let n: Normalization = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"gain\": number, \"bias\": number}}",
            p.display()
        )
    })?;
    if !(n.gain.is_finite() && n.bias.is_finite()) || n.gain == 0.0 {
        bail!(
            "{}: gain must be a non-zero finite number and bias finite",
            p.display()
        );
    }
    Ok(Some(n))
}

fn write_normalization(dir: &Path, n: &Normalization) -> Result<()> {
    let v = json!({"gain": n.gain, "bias": n.bias, "formula": "reward = gain * score + bias"});
    write_file_synced(
        &dir.join(NORMALIZATION_FILE),
        serde_json::to_string_pretty(&v)?.as_bytes(),
    )
}
