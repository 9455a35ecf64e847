//! Rejection sampling (Llama-2): sample K responses per prompt from the
//! policy, score them with the reward, keep the best per prompt (optionally
//! pooled with the best of earlier rounds), then fine-tune on the kept
//! responses with the SFT loss.
use crate::data::{Prompt, Sequence};
use crate::reward::{Reward, Scored};
use anyhow::{bail, Context, Result};
use policy::generate::{generate, SamplingConfig};
use policy::model::{Dev, Llama};
use policy::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Sampling settings of rejection sampling.
#[derive(Clone, Debug)]
pub struct RsConfig {
    /// Samples per prompt (Llama-2: 4 … 30 depending on the round).
    pub k: usize,
    /// Sampling (temperature re-tuned per round: Llama-2 found 1.2–1.3 best for large K).
    pub sampling: SamplingConfig,
    /// Sequences per generation batch.
    pub gen_batch: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// One kept (or sampled) response, as stored in `samples.jsonl` / `best.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Index of the prompt in the prompt file.
    pub prompt_index: usize,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    pub response: String,
    pub reward: f32,
    /// Whether the response ended with a stop token (else it hit the length limit).
    pub finished: bool,
    /// Where it came from: `current` or the file of an earlier round.
    pub origin: String,
    /// Whether its prompt is tagged unsafe (for the safety + helpfulness reward).
    #[serde(default)]
    pub unsafe_prompt: bool,
}

/// Summary of a reward distribution.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl Distribution {
    /// Summary of `xs` (empty → all zero).
    pub fn of(xs: &[f32]) -> Self {
        if xs.is_empty() {
            return Distribution {
                count: 0,
                mean: 0.0,
                std: 0.0,
                min: 0.0,
                p25: 0.0,
                median: 0.0,
                p75: 0.0,
                max: 0.0,
            };
        }
        let mut v: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let q = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Distribution {
            count: v.len(),
            mean,
            std,
            min: v[0],
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            max: v[v.len() - 1],
        }
    }
}

/// What selection saw.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RsReport {
    pub prompts: usize,
    pub k: usize,
    pub temperature: f32,
    /// Rewards of all samples of this round.
    pub samples: Distribution,
    /// Rewards of the kept responses.
    pub kept: Distribution,
    /// Kept responses that came from an earlier round's pool.
    pub kept_from_pool: usize,
}

/// Samples `k` responses per prompt and scores them (see [`score`]).
pub fn sample<D: Dev>(
    policy: &Llama<D>,
    tok: &Tokenizer,
    prompts: &[Prompt],
    reward: &Reward<D>,
    cfg: &RsConfig,
) -> Result<Vec<Sample>> {
    let mut samples = generate_samples(policy, tok, prompts, cfg)?;
    score(&mut samples, prompts, tok, reward)?;
    Ok(samples)
}

/// Samples `k` responses per prompt, not yet scored (reward 0).
pub fn generate_samples<D: Dev>(
    policy: &Llama<D>,
    tok: &Tokenizer,
    prompts: &[Prompt],
    cfg: &RsConfig,
) -> Result<Vec<Sample>> {
    if cfg.k == 0 {
        bail!("K (samples per prompt) must be at least 1");
    }
    let rows: Vec<(usize, &Prompt)> = prompts
        .iter()
        .enumerate()
        .flat_map(|(i, p)| std::iter::repeat_n((i, p), cfg.k))
        .collect();
    let bar = policy::train_loop::progress_bar(rows.len() as u64, 0, cfg.progress, "samples");
    let mut out = Vec::with_capacity(rows.len());
    for (c, chunk) in rows.chunks(cfg.gen_batch.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|(_, p)| p.ids.clone()).collect();
        // each chunk its own streams, so no two rows share one
        let sc = SamplingConfig {
            seed: cfg
                .sampling
                .seed
                .wrapping_add((c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            ..cfg.sampling.clone()
        };
        for ((i, p), g) in chunk.iter().zip(generate(policy, &ids, &sc)?) {
            out.push(Sample {
                prompt_index: *i,
                prompt_ids: p.ids.clone(),
                response: tok.decode(&g.tokens, true)?,
                response_ids: g.tokens,
                reward: 0.0,
                finished: g.finish_reason == policy::generate::FinishReason::Stop,
                origin: "current".into(),
                unsafe_prompt: p.unsafe_prompt,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Scores `samples` with `reward` in one call, so a reward that normalizes
/// over its inputs (Llama-2's whitened safety + helpfulness reward) puts them
/// all on one scale, whatever the generation batch; earlier rounds' samples
/// scored together with this round's are re-scored by the current reward.
/// A sample's prompt is found in `prompts` by its tokens (else its decoded
/// text stands for it).
pub fn score<D: Dev>(
    samples: &mut [Sample],
    prompts: &[Prompt],
    tok: &Tokenizer,
    reward: &Reward<D>,
) -> Result<()> {
    let by_ids: HashMap<&[u32], &Prompt> = prompts.iter().map(|p| (p.ids.as_slice(), p)).collect();
    let sample_prompts: Vec<Cow<Prompt>> = samples
        .iter()
        .map(|s| match by_ids.get(s.prompt_ids.as_slice()) {
            Some(&p) => Ok(Cow::Borrowed(p)),
            None => Ok(Cow::Owned(Prompt {
                content: reward_model::data::Content::Text(tok.decode(&s.prompt_ids, true)?),
                ids: s.prompt_ids.clone(),
                unsafe_prompt: s.unsafe_prompt,
            })),
        })
        .collect::<Result<_>>()?;
    let scored: Vec<Scored> = samples
        .iter()
        .zip(&sample_prompts)
        .map(|(s, p)| Scored {
            prompt: p,
            response_ids: &s.response_ids,
            response_text: &s.response,
        })
        .collect();
    let rewards = reward.score(&scored, Some(tok))?;
    for (s, r) in samples.iter_mut().zip(rewards) {
        s.reward = r;
    }
    Ok(())
}

/// The best sample per prompt among this round's samples and `pool` (earlier
/// rounds' best for the same prompt tokens, re-scored with this round's
/// reward by [`score`]). Ties keep the earlier sample. Empty responses are
/// never kept, nor (unless `keep_truncated`) responses that hit the length
/// limit without a stop token.
pub fn select_best(samples: &[Sample], pool: &[Sample], keep_truncated: bool) -> Vec<Sample> {
    let mut best: HashMap<&[u32], &Sample> = HashMap::new();
    let mut order: Vec<&[u32]> = vec![];
    for s in samples.iter().chain(pool) {
        if s.response_ids.is_empty() || !(s.finished || keep_truncated) {
            continue;
        }
        match best.get(s.prompt_ids.as_slice()) {
            Some(b) if b.reward >= s.reward => {}
            Some(_) => {
                best.insert(&s.prompt_ids, s);
            }
            None => {
                order.push(&s.prompt_ids);
                best.insert(&s.prompt_ids, s);
            }
        }
    }
    order.into_iter().map(|k| best[k].clone()).collect()
}

/// The report of one selection.
pub fn report(samples: &[Sample], kept: &[Sample], prompts: usize, cfg: &RsConfig) -> RsReport {
    let all: Vec<f32> = samples.iter().map(|s| s.reward).collect();
    let best: Vec<f32> = kept.iter().map(|s| s.reward).collect();
    RsReport {
        prompts,
        k: cfg.k,
        temperature: cfg.sampling.temperature,
        samples: Distribution::of(&all),
        kept: Distribution::of(&best),
        kept_from_pool: kept.iter().filter(|s| s.origin != "current").count(),
    }
}

/// SFT sequences of kept samples (loss on the response).
pub fn to_sequences(kept: &[Sample]) -> Vec<Sequence> {
    kept.iter()
        .map(|s| Sequence::prompt_response(&s.prompt_ids, &s.response_ids))
        .collect()
}

/// Writes samples as JSONL (atomically: temp file + rename).
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    for s in samples {
        writeln!(tmp, "{}", serde_json::to_string(s)?)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads samples written by [`write_samples`]; `origin` is set to the file name.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let mut s: Sample = serde_json::from_str(l).with_context(|| {
                format!("{}: line {}: not a sample line", path.display(), i + 1)
            })?;
            if s.origin == "current" {
                s.origin = path.display().to_string();
            }
            Ok(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: u32, r: f32, origin: &str) -> Sample {
        Sample {
            prompt_index: p as usize,
            prompt_ids: vec![p],
            response_ids: vec![9],
            response: String::new(),
            reward: r,
            finished: true,
            origin: origin.into(),
            unsafe_prompt: false,
        }
    }

    #[test]
    fn best_per_prompt_with_pool() {
        let samples = vec![
            s(1, 0.5, "current"),
            s(1, 0.9, "current"),
            s(2, -1.0, "current"),
            s(2, -0.5, "current"),
        ];
        let pool = vec![s(1, 0.7, "old"), s(2, 3.0, "old"), s(3, 1.0, "old")];
        let best = select_best(&samples, &pool, false);
        let got: Vec<(u32, f32, &str)> = best
            .iter()
            .map(|b| (b.prompt_ids[0], b.reward, b.origin.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(1, 0.9, "current"), (2, 3.0, "old"), (3, 1.0, "old")]
        );
        let cfg = RsConfig {
            k: 2,
            sampling: SamplingConfig::default(),
            gen_batch: 4,
            progress: false,
        };
        let r = report(&samples, &best, 2, &cfg);
        assert_eq!(r.kept_from_pool, 2);
        assert!((r.samples.mean - (-0.025)).abs() < 1e-6);
        assert_eq!(r.kept.max, 3.0);
    }

    #[test]
    fn truncated_responses_are_dropped_unless_asked() {
        let mut cut = s(1, 5.0, "current");
        cut.finished = false;
        let samples = vec![s(1, 0.5, "current"), cut.clone(), s(2, 0.1, "current")];
        let kept = select_best(&samples, &[], false);
        assert_eq!(
            kept.iter().map(|k| k.reward).collect::<Vec<_>>(),
            vec![0.5, 0.1]
        );
        // a prompt whose every sample was cut keeps nothing
        assert!(select_best(&[cut.clone()], &[], false).is_empty());
        assert_eq!(select_best(&samples, &[], true)[0].reward, 5.0);
    }

    #[test]
    fn distribution_quantiles() {
        let d = Distribution::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            (d.min, d.p25, d.median, d.p75, d.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        assert!((d.std - 2f64.sqrt()).abs() < 1e-9);
    }
}
