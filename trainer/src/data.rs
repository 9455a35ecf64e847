//! Training data in TRL's dataset formats (JSONL, one example per line),
//! tokenized into sequences with a per-token loss mask.
//!
//! SFT lines:
//! - language modeling `{"text": ...}`: every token after the first is trained;
//! - prompt-completion `{"prompt": ..., "completion": ...}`: only the
//!   completion (and the EOS appended to it) is trained, the prompt is masked
//!   (Llama-2);
//! - conversational `{"messages": [...]}`: only assistant turns are trained;
//! - conversational prompt-completion: `prompt` and `completion` are message lists.
//!
//! Preference lines (DPO) are the reward model's formats (see
//! `reward_model::data`). Prompt-only lines (`{"prompt": ...}`, for rejection
//! sampling and PPO) may also carry `"unsafe": true` or `"tags": ["safety", ...]`.
//!
//! One tokenization rule for every stage, TRL's: plain text is tokenized as
//! prompt + completion in one piece (with the tokenizer's special tokens,
//! e.g. BOS, and EOS appended), and the completion starts where the prompt
//! tokenized alone ends ([`reward_model::data::encode_text_pair`]); so a
//! prompt ending in whitespace gives the same tokens for SFT, DPO and the
//! reward model. Chat messages go through the checkpoint's chat template as
//! one conversation, split where the completion starts. The reward model
//! scores sampled responses (rejection sampling, PPO, evaluation) by the same
//! rule as its training pairs: the prompt and the response's text, joined.
use anyhow::{bail, Context, Result};
use policy::chat::{split_prompt_completion, tokenize_conversation, Message};
use policy::tokenizer::Tokenizer;
use reward_model::data::{Content, Pair};
use serde_json::Value;
use std::path::Path;

/// A token sequence and which of its tokens the loss is on.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// `mask[i]`: token `i` is a training target (predicted from the tokens
    /// before it). `mask[0]` is always false.
    pub mask: Vec<bool>,
}

impl Sequence {
    /// `prompt` followed by `response`, the loss on the response.
    pub fn prompt_response(prompt: &[u32], response: &[u32]) -> Self {
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(response);
        let mut mask = vec![false; prompt.len()];
        mask.extend(std::iter::repeat_n(true, response.len()));
        if let Some(m) = mask.first_mut() {
            *m = false;
        }
        Sequence { ids, mask }
    }

    /// Number of trained tokens.
    pub fn targets(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// A prompt for sampling: its content, its tokens, and its safety tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub content: Content,
    pub ids: Vec<u32>,
    /// Tagged unsafe (used by the Llama-2 safety + helpfulness reward).
    pub unsafe_prompt: bool,
}

/// A tokenized preference pair: one prompt, two responses.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl PreferencePair {
    /// The chosen and rejected sequences with the loss on the responses.
    pub fn sequences(&self) -> (Sequence, Sequence) {
        (
            Sequence::prompt_response(&self.prompt, &self.chosen),
            Sequence::prompt_response(&self.prompt, &self.rejected),
        )
    }
}

/// Tokenizes prompts and responses the same way for every stage.
pub struct Encoder<'a> {
    pub tok: &'a Tokenizer,
}

impl<'a> Encoder<'a> {
    /// Tokens of a prompt, ready for generation (chat: with the assistant header).
    pub fn prompt(&self, p: &Content) -> Result<Vec<u32>> {
        let ids = match p {
            Content::Text(t) => self.tok.encode(t, true)?,
            Content::Chat(m) => policy::chat::apply_chat_template(self.tok, m, true)?.1,
        };
        if ids.is_empty() {
            bail!("the prompt encodes to no tokens");
        }
        Ok(ids)
    }

    /// Prompt and response tokens (their concatenation is the trained sequence).
    pub fn prompt_response(
        &self,
        prompt: &Content,
        response: &Content,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let (mut ids, split) = self.joint(prompt, response)?;
        let completion = ids.split_off(split);
        Ok((ids, completion))
    }

    /// Prompt + response tokenized together, and where the response starts
    /// (see the module docs).
    pub fn joint(&self, prompt: &Content, response: &Content) -> Result<(Vec<u32>, usize)> {
        match (prompt, response) {
            (Content::Text(p), Content::Text(r)) => {
                reward_model::data::encode_text_pair(self.tok, p, r)
            }
            _ => {
                let (prompt_msgs, reply) = split_chat(prompt, response)?;
                let pc = split_prompt_completion(self.tok, &prompt_msgs, &reply)?;
                let split = pc.prompt_ids.len();
                Ok(([pc.prompt_ids, pc.completion_ids].concat(), split))
            }
        }
    }
}

/// A chat prompt and the text of its one assistant reply. Handles TRL's
/// implicit-prompt form (an empty prompt and whole conversations as responses).
fn split_chat(prompt: &Content, response: &Content) -> Result<(Vec<Message>, String)> {
    let mut msgs = match prompt {
        Content::Chat(m) => m.clone(),
        Content::Text(t) if t.is_empty() => vec![],
        Content::Text(t) => vec![Message::user(t.clone())],
    };
    let reply = match response {
        Content::Text(t) => t.clone(),
        Content::Chat(m) => {
            let (last, before) = m
                .split_last()
                .context("a response is an empty message list")?;
            if last.role != "assistant" {
                bail!(
                    "the response's last message must be from the assistant, not `{}`",
                    last.role
                );
            }
            msgs.extend(before.iter().cloned());
            last.content.clone()
        }
    };
    if msgs.is_empty() {
        bail!("a chat response needs a prompt (a `prompt` field or earlier messages)");
    }
    Ok((msgs, reply))
}

fn read_lines(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not valid JSON", path.display(), i + 1))?;
        if !v.is_object() {
            bail!(
                "{}: line {}: each line must be a JSON object",
                path.display(),
                i + 1
            );
        }
        out.push((i + 1, v));
    }
    if out.is_empty() {
        bail!("{} has no examples", path.display());
    }
    Ok(out)
}

fn content(v: &Value, field: &str) -> Result<Content> {
    Content::from_json(
        v.get(field).with_context(|| format!("missing `{field}`"))?,
        field,
    )
}

/// One SFT example from a JSON line.
pub fn sft_example(tok: &Tokenizer, v: &Value) -> Result<Sequence> {
    let enc = Encoder { tok };
    let seq = if let Some(t) = v.get("text") {
        let t = t.as_str().context("`text` must be a string")?;
        let mut ids = tok.encode(t, true)?;
        if let Some(eos) = tok.eos_id() {
            ids.push(eos);
        }
        let mask = (0..ids.len()).map(|i| i > 0).collect();
        Sequence { ids, mask }
    } else if let Some(m) = v.get("messages") {
        let msgs: Vec<Message> = serde_json::from_value(m.clone())
            .context("`messages` must be a list of {\"role\", \"content\"} messages")?;
        let chat = tokenize_conversation(tok, &msgs, false)?;
        let mut mask = chat.assistant_mask.clone();
        if let Some(m) = mask.first_mut() {
            *m = false;
        }
        Sequence {
            ids: chat.ids,
            mask,
        }
    } else if v.get("prompt").is_some() && v.get("completion").is_some() {
        let (p, r) = enc.prompt_response(&content(v, "prompt")?, &content(v, "completion")?)?;
        Sequence::prompt_response(&p, &r)
    } else {
        bail!("expected `text`, `messages`, or `prompt` + `completion`");
    };
    if seq.targets() == 0 {
        bail!("the example has no tokens to train on (no completion / assistant turn)");
    }
    Ok(seq)
}

/// Reads SFT examples; examples longer than `max_len` are dropped (the count
/// is returned) rather than cut, so no truncated response is learned.
pub fn read_sft(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<(Vec<Sequence>, usize)> {
    let mut out = vec![];
    let mut dropped = 0;
    for (line, v) in read_lines(path)? {
        let s = sft_example(tok, &v).with_context(|| format!("{}: line {line}", path.display()))?;
        if s.ids.len() > max_len {
            dropped += 1;
        } else {
            out.push(s);
        }
    }
    Ok((out, dropped))
}

/// Reads prompt-only lines (`prompt` as text or messages; other fields ignored).
pub fn read_prompts(path: &Path, tok: &Tokenizer) -> Result<Vec<Prompt>> {
    let enc = Encoder { tok };
    read_lines(path)?
        .into_iter()
        .map(|(line, v)| {
            let ctx = || format!("{}: line {line}", path.display());
            let content = content(&v, "prompt").with_context(ctx)?;
            let ids = enc.prompt(&content).with_context(ctx)?;
            let unsafe_prompt = reward_model::data::is_unsafe_prompt(&v);
            Ok(Prompt {
                content,
                ids,
                unsafe_prompt,
            })
        })
        .collect()
}

/// Tokenizes preference pairs; pairs with a side longer than `max_len` are
/// dropped (the count is returned).
pub fn encode_preferences(
    tok: &Tokenizer,
    pairs: &[Pair],
    max_len: usize,
) -> Result<(Vec<PreferencePair>, usize)> {
    let enc = Encoder { tok };
    let mut out = vec![];
    let mut dropped = 0;
    for (i, p) in pairs.iter().enumerate() {
        let ctx = || format!("pair {i} ({})", p.group);
        let (mut chosen, sc) = enc.joint(&p.prompt, &p.chosen).with_context(ctx)?;
        let (mut rejected, sr) = enc.joint(&p.prompt, &p.rejected).with_context(ctx)?;
        // TRL: both responses start where either side leaves the prompt
        let split = sc.min(sr);
        if chosen[..split] != rejected[..split] {
            bail!("{}: chosen and rejected have different prompts", ctx());
        }
        let prompt = chosen[..split].to_vec();
        chosen.drain(..split);
        rejected.drain(..split);
        if prompt.is_empty() || chosen.is_empty() || rejected.is_empty() {
            bail!("{}: empty prompt or response after tokenization", ctx());
        }
        if prompt.len() + chosen.len().max(rejected.len()) > max_len {
            dropped += 1;
            continue;
        }
        out.push(PreferencePair {
            prompt,
            chosen,
            rejected,
        });
    }
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_response_masks_the_prompt() {
        let s = Sequence::prompt_response(&[1, 5, 6], &[7, 2]);
        assert_eq!(s.ids, vec![1, 5, 6, 7, 2]);
        assert_eq!(s.mask, vec![false, false, false, true, true]);
        assert_eq!(s.targets(), 2);
        // a response with no prompt: the first token has no context
        assert_eq!(
            Sequence::prompt_response(&[], &[3, 4]).mask,
            vec![false, true]
        );
    }

    #[test]
    fn chat_pairs_split_implicit_prompts() {
        let whole = Content::Chat(vec![Message::user("hi"), Message::assistant("hello")]);
        let (msgs, reply) = split_chat(&Content::Text(String::new()), &whole).unwrap();
        assert_eq!(msgs, vec![Message::user("hi")]);
        assert_eq!(reply, "hello");
        let bad = Content::Chat(vec![Message::user("hi")]);
        assert!(split_chat(&Content::Text(String::new()), &bad).is_err());
    }
}
