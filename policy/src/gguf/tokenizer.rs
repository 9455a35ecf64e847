//! A GGUF file's tokenizer (`tokenizer.ggml.*` metadata) as the Hugging Face
//! files our [`crate::tokenizer::Tokenizer`] and transformers load:
//! `tokenizer.json` and `tokenizer_config.json`.
//!
//! A GGUF has no `tokenizer.json`; it stores the vocabulary, merges or
//! scores, token types and special token ids under llama.cpp's key names.
//! We build the pipeline transformers 5 builds from the same metadata
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), so both give the same
//! token ids:
//!
//! - `gpt2`: byte-level BPE with the file's merges; tokens not spelled in the
//!   byte alphabet are respelled; the pre-tokenizer splits with the regex
//!   `tokenizer.ggml.pre` names (Llama-3's for `llama-bpe` and its kin), else
//!   GPT-2's byte-level split (`default`, `gpt2`, `smollm`, ...).
//! - `llama`: SentencePiece-style BPE with byte fallback and a `▁` Metaspace;
//!   merges from the file, else derived from the vocabulary and its scores
//!   (transformers' `generate_merges`).
//!
//! Tokens typed CONTROL (3) become special added tokens, USER_DEFINED (4)
//! plain added ones; BOS / EOS are added by the post-processor when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say so (a `llama`
//! vocabulary that does not say adds BOS, as llama.cpp does).
use super::reader::GgufHeader;
use super::GgufArray;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// Token type of a control token (`<s>`, `<|im_end|>`, ...).
pub const CONTROL: i32 = 3;
/// Token type of a user-defined added token (`<think>`, ...).
pub const USER_DEFINED: i32 = 4;

/// The tokenizer metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer the merges were learned with.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece vocabularies).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"`, best first.
    pub merges: Option<Vec<String>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Llama-3's split regex (`llama-bpe` and the vocabularies that reuse it).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre`; `None`: GPT-2's byte-level split.
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            Some(LLAMA3_SPLIT)
        }
        _ => None,
    }
}

/// GPT-2's map from bytes to the printable characters byte-level BPE spells them with.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        out[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    out
}

impl GgufTokenizer {
    /// The tokenizer metadata of a GGUF file; an error names a key of the
    /// wrong type or a tokenizer the file does not describe.
    pub fn from_header(h: &GgufHeader) -> Result<GgufTokenizer> {
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let model = h
            .get_str(&key("model"))?
            .context("the GGUF file has no tokenizer (no tokenizer.ggml.model)")?
            .to_string();
        let strings = |k: &str| -> Result<Option<Vec<String>>> {
            match h.get_array(&key(k))? {
                None => Ok(None),
                Some(GgufArray::String(v)) => Ok(Some(v.clone())),
                Some(a) => bail!(
                    "GGUF metadata `{}` should be strings, not {:?}",
                    key(k),
                    a.elem_type()
                ),
            }
        };
        let scores = match h.get_array(&key("scores"))? {
            None => None,
            Some(GgufArray::F32(v)) => Some(v.clone()),
            Some(a) => bail!(
                "GGUF metadata `tokenizer.ggml.scores` should be f32, not {:?}",
                a.elem_type()
            ),
        };
        let token_types = match h.get_array(&key("token_type"))? {
            None => None,
            Some(GgufArray::I32(v)) => Some(v.clone()),
            Some(GgufArray::U32(v)) => Some(v.iter().map(|&x| x as i32).collect()),
            Some(a) => bail!(
                "GGUF metadata `tokenizer.ggml.token_type` should be integers, not {:?}",
                a.elem_type()
            ),
        };
        let id = |k: &str| -> Result<Option<u32>> {
            h.get_u64(&key(k))?
                .map(|v| u32::try_from(v).with_context(|| format!("{} {v} is too large", key(k))))
                .transpose()
        };
        Ok(GgufTokenizer {
            model,
            pre: h.get_str(&key("pre"))?.map(String::from),
            tokens: strings("tokens")?.context("the GGUF file has no tokenizer.ggml.tokens")?,
            scores,
            token_types,
            merges: strings("merges")?,
            bos_token_id: id("bos_token_id")?,
            eos_token_id: id("eos_token_id")?,
            unknown_token_id: id("unknown_token_id")?,
            padding_token_id: id("padding_token_id")?,
            add_bos_token: h.get_bool(&key("add_bos_token"))?,
            add_eos_token: h.get_bool(&key("add_eos_token"))?,
            chat_template: h.get_str("tokenizer.chat_template")?.map(String::from),
        })
    }

    fn token(&self, id: Option<u32>, what: &str) -> Result<Option<String>> {
        id.map(|i| {
            self.tokens.get(i as usize).cloned().with_context(|| {
                format!(
                    "tokenizer.ggml.{what} {i} is not a token id (the vocabulary has {})",
                    self.tokens.len()
                )
            })
        })
        .transpose()
    }

    fn byte_level(&self) -> Result<bool> {
        match self.model.as_str() {
            "gpt2" => Ok(true),
            "llama" => Ok(false),
            other => {
                bail!("tokenizer.ggml.model `{other}` is not supported (supported: gpt2, llama)")
            }
        }
    }

    fn add_bos(&self) -> bool {
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
        self.add_bos_token.unwrap_or(self.model == "llama")
    }

    /// The vocabulary as the tokenizer model spells it.
    fn vocab(&self) -> Result<Map<String, Value>> {
        let mut vocab = Map::new();
        if self.byte_level()? {
            let spelling = bytes_to_unicode();
            let alphabet: HashSet<char> = spelling.iter().copied().collect();
            for (i, t) in self.tokens.iter().enumerate() {
                let key = if t.chars().all(|c| alphabet.contains(&c)) {
                    t.clone()
                } else {
                    t.bytes().map(|b| spelling[b as usize]).collect()
                };
                vocab.insert(key, json!(i));
            }
        } else {
            for (i, t) in self.tokens.iter().enumerate() {
                vocab.insert(t.clone(), json!(i));
            }
        }
        Ok(vocab)
    }

    /// The merges of the file, or those a SentencePiece vocabulary implies.
    fn merges(&self) -> Result<Vec<(String, String)>> {
        if let Some(m) = &self.merges {
            return m
                .iter()
                .enumerate()
                .map(|(i, s)| match s.split(' ').collect::<Vec<_>>()[..] {
                    [l, r] => Ok((l.to_string(), r.to_string())),
                    _ => bail!(
                        "tokenizer.ggml.merges[{i}] `{s}` is not two tokens separated by one space"
                    ),
                })
                .collect();
        }
        let scores = self
            .scores
            .as_ref()
            .context("the vocabulary has neither merges nor scores to derive them from")?;
        if scores.len() != self.tokens.len() {
            bail!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                self.tokens.len()
            );
        }
        Ok(derive_merges(&self.tokens, scores))
    }

    /// `tokenizer.json`.
    pub fn tokenizer_json(&self) -> Result<Value> {
        if self.tokens.is_empty() {
            bail!("tokenizer.ggml.tokens is empty");
        }
        if let Some(t) = &self.token_types {
            if t.len() != self.tokens.len() {
                bail!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    t.len(),
                    self.tokens.len()
                );
            }
        }
        let byte_level = self.byte_level()?;
        let merges: Vec<Value> = self
            .merges()?
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect();
        let vocab = self.vocab()?;
        let added_tokens = self.added_tokens(&vocab)?;
        let model = if byte_level {
            json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                   "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                   "vocab": vocab, "merges": merges})
        } else {
            json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                   "vocab": vocab, "merges": merges})
        };
        let byte_level_step = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let (pre_tokenizer, decoder) = if byte_level {
            let pre = match self.pre.as_deref().and_then(split_regex) {
                Some(re) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                    byte_level_step(false)]}),
                None => byte_level_step(true),
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (pre, decoder)
        } else {
            let pre = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (pre, decoder)
        };
        Ok(json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": self.post_processor()?,
            "decoder": decoder,
            "model": model,
        }))
    }

    /// Control tokens (and the named special ones) as special added tokens,
    /// user-defined ones as plain added tokens, by id.
    fn added_tokens(&self, vocab: &Map<String, Value>) -> Result<Vec<Value>> {
        let byte_level = self.byte_level()?;
        let alphabet: HashSet<char> = bytes_to_unicode().iter().copied().collect();
        let spelled = |t: &str| !byte_level || t.chars().all(|c| alphabet.contains(&c));
        let types = self.token_types.clone().unwrap_or_default();
        let mut special: Vec<(usize, bool)> = types
            .iter()
            .enumerate()
            .filter(|(i, &ty)| ty == CONTROL && spelled(&self.tokens[*i]))
            .map(|(i, _)| (i, true))
            .collect();
        // the tokens tokenizer_config.json names are special whatever their type
        for id in [
            self.bos_token_id,
            self.eos_token_id,
            self.unknown_token_id,
            self.padding_token_id,
        ]
        .into_iter()
        .flatten()
        {
            let i = id as usize;
            if i < self.tokens.len() && !special.iter().any(|(j, _)| *j == i) {
                special.push((i, true));
            }
        }
        for (i, &ty) in types.iter().enumerate() {
            if ty == USER_DEFINED
                && vocab.contains_key(&self.tokens[i])
                && !special.iter().any(|(j, _)| *j == i)
            {
                special.push((i, false));
            }
        }
        special.sort();
        Ok(special
            .into_iter()
            .map(|(i, is_special)| {
                json!({"id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": is_special})
            })
            .collect())
    }

    /// BOS / EOS around each sequence, as `add_bos_token` / `add_eos_token` say.
    fn post_processor(&self) -> Result<Value> {
        let bos = self
            .token(self.bos_token_id, "bos_token_id")?
            .filter(|_| self.add_bos());
        let eos = self
            .token(self.eos_token_id, "eos_token_id")?
            .filter(|_| self.add_eos_token == Some(true));
        let special =
            |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let around = |part: &str, type_id: u32| {
            let mut v = vec![];
            if let Some(b) = &bos {
                v.push(special(b, type_id));
            }
            v.push(seq(part, type_id));
            if let Some(e) = &eos {
                v.push(special(e, type_id));
            }
            v
        };
        let single = around("A", 0);
        let pair = [around("A", 0), around("B", 1)].concat();
        let mut tokens = Map::new();
        for (t, id) in [(&bos, self.bos_token_id), (&eos, self.eos_token_id)] {
            if let (Some(t), Some(id)) = (t, id) {
                tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        Ok(
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens}),
        )
    }

    /// `tokenizer_config.json`.
    pub fn tokenizer_config(&self) -> Result<Value> {
        let mut c = Map::new();
        c.insert("add_bos_token".into(), json!(self.add_bos()));
        c.insert(
            "add_eos_token".into(),
            json!(self.add_eos_token.unwrap_or(false)),
        );
        for (key, id, what) in [
            ("bos_token", self.bos_token_id, "bos_token_id"),
            ("eos_token", self.eos_token_id, "eos_token_id"),
            ("unk_token", self.unknown_token_id, "unknown_token_id"),
            ("pad_token", self.padding_token_id, "padding_token_id"),
        ] {
            c.insert(key.into(), json!(self.token(id, what)?));
        }
        // a SentencePiece vocabulary gets LlamaTokenizer's pipeline on load (the
        // one written here); a byte-level one is taken as written
        let class = if self.byte_level()? {
            "PreTrainedTokenizerFast"
        } else {
            "LlamaTokenizer"
        };
        c.insert("tokenizer_class".into(), json!(class));
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        if let Some(t) = &self.chat_template {
            c.insert("chat_template".into(), json!(t));
        }
        Ok(Value::Object(c))
    }
}

/// The merges a SentencePiece vocabulary implies, best first: every split of
/// every token into two tokens of the vocabulary, ordered by the token's
/// score, then by the lengths of the two parts (transformers'
/// `generate_merges` with scores, whose order this keeps exactly).
fn derive_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut score: HashMap<&str, f32> = HashMap::new();
    let mut order: Vec<&str> = vec![];
    for (i, (t, s)) in tokens.iter().zip(scores).enumerate() {
        if index.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, *s);
    }
    let mut merges: Vec<(&str, &str, f32)> = vec![];
    for t in order {
        let mut local: Vec<(&str, &str, f32)> = t
            .char_indices()
            .skip(1)
            .map(|(at, _)| (&t[..at], &t[at..]))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    let len = |s: &str| s.chars().count();
    // stable, best first: equal keys keep the order above
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(len(b.0).cmp(&len(a.0)))
            .then(len(b.1).cmp(&len(a.1)))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm() -> GgufTokenizer {
        let tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "▁a"]
            .map(String::from)
            .into();
        GgufTokenizer {
            model: "llama".into(),
            scores: Some((0..tokens.len()).map(|i| -(i as f32)).collect()),
            token_types: Some(vec![2, 3, 3, 1, 1, 1, 1, 1, 1]),
            tokens,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            unknown_token_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        let t = spm();
        let m = derive_merges(&t.tokens, t.scores.as_ref().unwrap());
        let m: Vec<String> = m.into_iter().map(|(l, r)| format!("{l} {r}")).collect();
        // "ab" (score -6) before "▁ab" (-7: ▁a+b, ▁+ab by part lengths) before "▁a" (-8)
        assert_eq!(m, ["a b", "▁a b", "▁ ab", "▁ a"]);
    }

    #[test]
    fn byte_level_respells_and_adds_control_tokens() {
        let t = GgufTokenizer {
            model: "gpt2".into(),
            pre: Some("llama-bpe".into()),
            tokens: ["<|end|>", "h", "i", "hi", " x"].map(String::from).into(),
            token_types: Some(vec![3, 1, 1, 1, 1]),
            merges: Some(vec!["h i".into()]),
            eos_token_id: Some(0),
            add_bos_token: Some(false),
            ..Default::default()
        };
        let j = t.tokenizer_json().unwrap();
        assert_eq!(j["model"]["vocab"]["Ġx"], 4, "a space is spelled Ġ");
        assert_eq!(j["added_tokens"][0]["content"], "<|end|>");
        assert_eq!(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
        assert_eq!(j["post_processor"]["single"].as_array().unwrap().len(), 1);
        let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&j).unwrap()).unwrap();
        let ids = tok.encode("hi<|end|>", true).unwrap().get_ids().to_vec();
        assert_eq!(ids, [3, 0]);
    }

    #[test]
    fn sentencepiece_adds_bos_by_default_and_decodes() {
        let t = spm();
        let j = t.tokenizer_json().unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&j).unwrap()).unwrap();
        let e = tok.encode("ab a", true).unwrap();
        assert_eq!(e.get_ids(), [1, 7, 8]);
        assert_eq!(tok.decode(e.get_ids(), true).unwrap(), "ab a");
        let c = t.tokenizer_config().unwrap();
        assert_eq!(c["bos_token"], "<s>");
        assert_eq!(c["add_bos_token"], true);
    }

    #[test]
    fn bad_metadata_is_a_clear_error() {
        let mut t = spm();
        t.model = "rwkv".into();
        let e = t.tokenizer_json().unwrap_err().to_string();
        assert!(e.contains("rwkv") && e.contains("gpt2"), "{e}");
        let mut t = spm();
        t.bos_token_id = Some(99);
        let e = format!("{:#}", t.tokenizer_json().unwrap_err());
        assert!(e.contains("bos_token_id 99"), "{e}");
        let mut t = spm();
        t.scores = None;
        assert!(t.tokenizer_json().is_err());
        let mut t = spm();
        t.merges = Some(vec!["a b c".into()]);
        assert!(format!("{:#}", t.tokenizer_json().unwrap_err()).contains("merges[0]"));
    }
}
