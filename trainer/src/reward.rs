//! Where rewards come from: a reward model, Llama-2's safety + helpfulness
//! combination, or a programmatic function of the text (tests, demos, tasks
//! with a known gold reward).
use crate::data::Prompt;
use anyhow::{bail, Context, Result};
use policy::model::Dev;
use policy::tokenizer::Tokenizer;
use reward_model::combine::{RewardFunction, RewardInput, SafetyHelpfulness, SingleReward};
use reward_model::data::{reward_tokens, Content};
use reward_model::model::RewardModel;
use std::path::Path;

/// A reward function of (prompt text, response text).
pub type TextReward = Box<dyn Fn(&str, &str) -> f32 + Send + Sync>;

/// A source of scalar rewards for sampled responses.
pub enum Reward<D: Dev> {
    /// One reward model's normalized reward of prompt + response tokens.
    Model(Box<SingleReward<D>>),
    /// Llama-2: safety reward if the prompt is unsafe or the safety reward < 0.15, else helpfulness; whitened.
    SafetyHelpfulness(Box<SafetyHelpfulness<D>>),
    /// A programmatic reward of the decoded text.
    Function(TextReward),
}

/// A response to score.
pub struct Scored<'a> {
    pub prompt: &'a Prompt,
    pub response_ids: &'a [u32],
    pub response_text: &'a str,
}

/// The text of a prompt a function sees: the text, or the last user message.
pub fn prompt_text(c: &Content) -> String {
    match c {
        Content::Text(t) => t.clone(),
        Content::Chat(m) => m
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default(),
    }
}

impl<D: Dev> Reward<D> {
    /// A reward model directory as a reward.
    pub fn model(dir: &Path, dev: &D, batch_size: usize) -> Result<Self> {
        let model = RewardModel::load(dir, dev)
            .with_context(|| format!("cannot load the reward model {}", dir.display()))?;
        Ok(Reward::Model(Box::new(SingleReward { model, batch_size })))
    }

    /// Llama-2's combination of a safety and a helpfulness reward model.
    pub fn safety_helpfulness(
        safety: &Path,
        helpfulness: &Path,
        dev: &D,
        batch_size: usize,
    ) -> Result<Self> {
        let s = RewardModel::load(safety, dev)
            .with_context(|| format!("cannot load the safety reward model {}", safety.display()))?;
        let h = RewardModel::load(helpfulness, dev).with_context(|| {
            format!(
                "cannot load the helpfulness reward model {}",
                helpfulness.display()
            )
        })?;
        let mut c = SafetyHelpfulness::new(s, h)?;
        c.batch_size = batch_size;
        Ok(Reward::SafetyHelpfulness(Box::new(c)))
    }

    /// A built-in programmatic reward: `contains:WORD` (1 if the response
    /// contains WORD, case-insensitive, else 0) or `count:WORD` (how many times, up to 10).
    pub fn builtin(spec: &str) -> Result<Self> {
        let (kind, word) = spec.split_once(':').with_context(|| {
            format!("unknown reward function `{spec}`; expected contains:WORD or count:WORD")
        })?;
        if word.is_empty() {
            bail!("reward function `{spec}` needs a word after the colon");
        }
        let w = word.to_lowercase();
        Ok(Reward::Function(match kind {
            "contains" => Box::new(move |_, r: &str| r.to_lowercase().contains(&w) as u8 as f32),
            "count" => {
                Box::new(move |_, r: &str| r.to_lowercase().matches(&w).count().min(10) as f32)
            }
            _ => bail!("unknown reward function `{kind}`; expected contains:WORD or count:WORD"),
        }))
    }

    /// The vocabulary a model-based reward scores (None for functions).
    pub fn vocab_size(&self) -> Option<usize> {
        match self {
            Reward::Model(m) => Some(m.model.backbone.cfg.vocab_size),
            Reward::SafetyHelpfulness(c) => Some(c.safety.backbone.cfg.vocab_size),
            Reward::Function(_) => None,
        }
    }

    /// Rewards of `samples`, in order. A reward model scores the prompt and
    /// the response's text tokenized together with `tok`, by the rule its
    /// training pairs followed ([`reward_model::data::reward_tokens`]); without
    /// a tokenizer (random-weight benchmarks) it scores the ids as generated.
    pub fn score(&self, samples: &[Scored], tok: Option<&Tokenizer>) -> Result<Vec<f32>> {
        let inputs = || -> Result<Vec<RewardInput>> {
            samples
                .iter()
                .map(|s| {
                    let tokens = match tok {
                        Some(tok) => reward_tokens(
                            tok,
                            &s.prompt.content,
                            &Content::Text(s.response_text.to_string()),
                        )?,
                        None => [s.prompt.ids.as_slice(), s.response_ids].concat(),
                    };
                    Ok(RewardInput {
                        tokens,
                        unsafe_prompt: s.prompt.unsafe_prompt,
                    })
                })
                .collect()
        };
        let r = match self {
            Reward::Model(m) => m.rewards(&inputs()?)?,
            Reward::SafetyHelpfulness(c) => {
                c.score(&inputs()?)?.into_iter().map(|c| c.reward).collect()
            }
            Reward::Function(f) => samples
                .iter()
                .map(|s| f(&prompt_text(&s.prompt.content), s.response_text))
                .collect(),
        };
        if let Some(i) = r.iter().position(|x| !x.is_finite()) {
            bail!("the reward of sample {i} is {}", r[i]);
        }
        Ok(r)
    }
}

/// Checks a model-based reward scores the policy's tokens.
pub fn check_vocab<D: Dev>(reward: &Reward<D>, policy_vocab: usize) -> Result<()> {
    if let Some(v) = reward.vocab_size() {
        if v != policy_vocab {
            bail!("the reward model's vocabulary ({v}) differs from the policy's ({policy_vocab}); it must share the policy's tokenizer (start it from the SFT model)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::Cpu;

    #[test]
    fn builtin_functions() {
        let p = Prompt {
            content: Content::Text("q".into()),
            ids: vec![1],
            unsafe_prompt: false,
        };
        let r: Reward<Cpu> = Reward::builtin("contains:Great").unwrap();
        let s = |t: &'static str| Scored {
            prompt: &p,
            response_ids: &[],
            response_text: t,
        };
        assert_eq!(
            r.score(&[s("a great day"), s("meh")], None).unwrap(),
            vec![1.0, 0.0]
        );
        let c: Reward<Cpu> = Reward::builtin("count:ab").unwrap();
        assert_eq!(c.score(&[s("ab ab AB")], None).unwrap(), vec![3.0]);
        assert!(Reward::<Cpu>::builtin("nope").is_err());
        assert!(Reward::<Cpu>::builtin("len:x").is_err());
        assert!(Reward::<Cpu>::builtin("contains:").is_err());
    }
}
