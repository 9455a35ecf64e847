//! Training a byte-level BPE tokenizer (Llama-3 style) for freshly initialised models.
//!
//! The result is written as a Hugging Face `tokenizer.json` + `tokenizer_config.json`
//! pair that both [`crate::tokenizer::Tokenizer::load`] and transformers'
//! `AutoTokenizer.from_pretrained` read. The pipeline copies Meta's Llama-3 files:
//! the Llama-3 split regex, byte-level mapping without a prefix space, a
//! post-processor that prepends `<|begin_of_text|>`, the Llama-3 chat template, and
//! the special tokens `<|begin_of_text|>`, `<|end_of_text|>`, `<|start_header_id|>`,
//! `<|end_header_id|>`, `<|eot_id|>`, `<|pad|>` — which take ids 0..=5 in that order,
//! so they do not depend on the corpus.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::chat::LLAMA3_TEMPLATE;
use crate::tokenizer::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};

/// About 20 KB of varied English (prose, dialogue, Q&A, numbers, code) for training a
/// tokenizer when no corpus is given; enough for vocabularies up to 4096.
pub const BUILTIN_CORPUS: &str = include_str!("bpe_corpus.txt");

/// The special tokens, in id order (ids 0..=5).
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
];

/// Llama-3's pre-tokenizer split pattern.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// 256 byte symbols + the special tokens: below this there is no room for merges.
pub const MIN_VOCAB_SIZE: usize = 256 + SPECIAL_TOKENS.len();

/// Training settings.
#[derive(Debug, Clone)]
pub struct BpeOptions {
    /// Target vocabulary size, special tokens included (e.g. 512 tiny, 2048–4096
    /// small). A small corpus may run out of merges first; the actual size is in
    /// [`TrainedBpe::vocab_size`].
    pub vocab_size: usize,
    /// Pairs seen fewer times than this are not merged.
    pub min_frequency: u64,
    /// `model_max_length` written to `tokenizer_config.json` (`None`: unlimited).
    pub model_max_length: Option<usize>,
}

impl Default for BpeOptions {
    fn default() -> Self {
        Self {
            vocab_size: 512,
            min_frequency: 0,
            model_max_length: None,
        }
    }
}

/// Ids of the special tokens (what `config.json` / `generation_config.json` need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpecialIds {
    /// `<|begin_of_text|>`: BOS.
    pub bos: u32,
    /// `<|end_of_text|>`: end of a plain document.
    pub end_of_text: u32,
    /// `<|start_header_id|>`.
    pub start_header: u32,
    /// `<|end_header_id|>`.
    pub end_header: u32,
    /// `<|eot_id|>`: end of a chat turn; the tokenizer's `eos_token` (as in Llama-3-Instruct).
    pub eot: u32,
    /// `<|pad|>`.
    pub pad: u32,
}

impl SpecialIds {
    /// The tokenizer's EOS (`<|eot_id|>`).
    pub fn eos(&self) -> u32 {
        self.eot
    }
    /// Ids generation should stop on: `[<|end_of_text|>, <|eot_id|>]` (Llama-3's list).
    pub fn stop_ids(&self) -> Vec<u32> {
        vec![self.end_of_text, self.eot]
    }
}

/// A trained tokenizer with its special ids.
#[derive(Clone)]
pub struct TrainedBpe {
    /// The trained tokenizer (pipeline + vocabulary + merges + special tokens).
    pub tokenizer: tokenizers::Tokenizer,
    /// Ids of the special tokens.
    pub special: SpecialIds,
    /// Number of ids, special tokens included (the embedding size to use).
    pub vocab_size: usize,
    /// `model_max_length` for the config.
    pub model_max_length: Option<usize>,
}

impl std::fmt::Debug for TrainedBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokenizer's own Debug prints every merge: keep it short.
        f.debug_struct("TrainedBpe")
            .field("special", &self.special)
            .field("vocab_size", &self.vocab_size)
            .field("model_max_length", &self.model_max_length)
            .finish()
    }
}

/// The untrained pipeline, spelled like Meta's Llama-3 `tokenizer.json`.
fn empty_pipeline() -> Result<tokenizers::Tokenizer> {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": SPECIAL_TOKENS[0], "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {SPECIAL_TOKENS[0]: {"id": SPECIAL_TOKENS[0], "ids": [0], "tokens": [SPECIAL_TOKENS[0]]}}}
        ]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": {}, "merges": []}
    });
    serde_json::from_value(json).map_err(|e| anyhow!("building the BPE pipeline failed: {e}"))
}

/// Trains on `texts` (each item a document or a line).
pub fn train<I, S>(texts: I, opts: &BpeOptions) -> Result<TrainedBpe>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str> + Send,
    I::IntoIter: Send,
{
    if opts.vocab_size < MIN_VOCAB_SIZE {
        bail!(
            "vocab_size {} is too small for a byte-level BPE: it needs at least {MIN_VOCAB_SIZE} \
             (256 bytes + {} special tokens)",
            opts.vocab_size,
            SPECIAL_TOKENS.len()
        );
    }
    if opts.vocab_size > u32::MAX as usize {
        bail!(
            "vocab_size {} does not fit 32-bit token ids",
            opts.vocab_size
        );
    }
    let mut tokenizer = empty_pipeline()?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    // Every byte is in the base alphabet so that any text can be encoded.
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut seen_text = false;
    let texts = texts
        .into_iter()
        .inspect(|t| seen_text |= !t.as_ref().trim().is_empty());
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| anyhow!("BPE training failed: {e}"))?;
    if !seen_text {
        bail!("the training corpus is empty");
    }
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| anyhow!("special token {t} missing after training"))
    };
    let special = SpecialIds {
        bos: id(SPECIAL_TOKENS[0])?,
        end_of_text: id(SPECIAL_TOKENS[1])?,
        start_header: id(SPECIAL_TOKENS[2])?,
        end_header: id(SPECIAL_TOKENS[3])?,
        eot: id(SPECIAL_TOKENS[4])?,
        pad: id(SPECIAL_TOKENS[5])?,
    };
    if special.bos != 0 {
        bail!(
            "expected {} to get id 0, got {}",
            SPECIAL_TOKENS[0],
            special.bos
        );
    }
    let vocab_size = tokenizer.get_vocab_size(true);
    Ok(TrainedBpe {
        tokenizer,
        special,
        vocab_size,
        model_max_length: opts.model_max_length,
    })
}

/// Trains on a text file (one training sequence per line), or on
/// [`BUILTIN_CORPUS`] when `corpus` is `None`.
pub fn train_from_corpus(corpus: Option<&Path>, opts: &BpeOptions) -> Result<TrainedBpe> {
    let text = match corpus {
        Some(p) => {
            fs::read_to_string(p).with_context(|| format!("cannot read corpus {}", p.display()))?
        }
        None => BUILTIN_CORPUS.to_owned(),
    };
    train(
        text.lines().map(|l| format!("{l}\n")).collect::<Vec<_>>(),
        opts,
    )
    .with_context(|| match corpus {
        Some(p) => format!("training a tokenizer on {}", p.display()),
        None => "training a tokenizer on the built-in corpus".to_owned(),
    })
}

impl TrainedBpe {
    /// The `tokenizer_config.json` contents: special tokens, Llama-3 chat template,
    /// `PreTrainedTokenizerFast` class.
    pub fn tokenizer_config(&self) -> serde_json::Value {
        let mut added = serde_json::Map::new();
        for t in SPECIAL_TOKENS {
            if let Some(id) = self.tokenizer.token_to_id(t) {
                added.insert(
                    id.to_string(),
                    serde_json::json!({"content": t, "lstrip": false, "normalized": false,
                                       "rstrip": false, "single_word": false, "special": true}),
                );
            }
        }
        // transformers' spelling of "no limit" (int(1e30)).
        let max_len = match self.model_max_length {
            Some(n) => serde_json::json!(n),
            None => serde_json::json!(1_000_000_000_000_000_019_884_624_838_656f64),
        };
        serde_json::json!({
            "added_tokens_decoder": added,
            "bos_token": SPECIAL_TOKENS[0],
            "eos_token": SPECIAL_TOKENS[4],
            "pad_token": SPECIAL_TOKENS[5],
            "add_bos_token": true,
            "add_eos_token": false,
            "chat_template": LLAMA3_TEMPLATE,
            "clean_up_tokenization_spaces": false,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": max_len,
            "tokenizer_class": "PreTrainedTokenizerFast"
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if
    /// needed). Callers wanting an atomic checkpoint write into a temporary directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("serializing the tokenizer failed: {e}"))?;
        fs::write(&tok_path, json)
            .with_context(|| format!("cannot write {}", tok_path.display()))?;
        let cfg_path = dir.join(TOKENIZER_CONFIG_FILE);
        let cfg = serde_json::to_string_pretty(&self.tokenizer_config())?;
        fs::write(&cfg_path, cfg)
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        Ok(())
    }
}

/// Trains (on `corpus`, or the built-in text) and writes the tokenizer files into
/// `dir`; returns the special ids and the actual vocabulary size.
pub fn train_and_save(
    dir: &Path,
    corpus: Option<&Path>,
    opts: &BpeOptions,
) -> Result<(SpecialIds, usize)> {
    let trained = train_from_corpus(corpus, opts)?;
    trained.save(dir)?;
    Ok((trained.special, trained.vocab_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{tokenize_conversation, Message};
    use crate::tokenizer::Tokenizer;

    #[test]
    fn bpe_trains_saves_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BpeOptions {
            vocab_size: 512,
            model_max_length: Some(256),
            ..Default::default()
        };
        let (ids, vocab) = train_and_save(dir.path(), None, &opts).unwrap();
        assert_eq!(vocab, 512);
        assert_eq!(
            ids,
            SpecialIds {
                bos: 0,
                end_of_text: 1,
                start_header: 2,
                end_header: 3,
                eot: 4,
                pad: 5
            }
        );
        let tok = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.vocab_size(), 512);
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_id(), Some(4));
        assert_eq!(tok.pad_id(), Some(5));
        assert_eq!(tok.model_max_length(), Some(256));
        for text in [
            "Hello, world! The harbor town woke slowly.",
            "  leading and trailing spaces  ",
            "unicode: héllo 日本語 🎉 — “quotes”",
            "tabs\tand\nnewlines\r\n",
            "",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
            let with_bos = tok.encode(text, true).unwrap();
            assert_eq!(with_bos[0], 0);
            assert_eq!(tok.decode(&with_bos, true).unwrap(), text);
        }
        // Special tokens in text are matched as special tokens.
        let ids = tok.encode("a<|eot_id|>b", false).unwrap();
        assert!(ids.contains(&4));
        // The chat template works with the trained tokenizer.
        let chat = tokenize_conversation(
            &tok,
            &[Message::user("Hi"), Message::assistant("Hello there.")],
            false,
        )
        .unwrap();
        assert_eq!(chat.ids[0], 0);
        assert_eq!(*chat.ids.last().unwrap(), 4);
        assert!(chat.assistant_mask.last().copied().unwrap());
        // Training is deterministic.
        let again = train_from_corpus(None, &opts).unwrap();
        let first = fs::read_to_string(dir.path().join(TOKENIZER_FILE)).unwrap();
        assert_eq!(again.tokenizer.to_string(false).unwrap(), first);
        // Optionally keep a copy for the Python loader check in scripts/make_chat_fixtures.py.
        if let Ok(out) = std::env::var("RLHF_WRITE_TRAINED_BPE") {
            again.save(Path::new(&out)).unwrap();
        }
    }

    #[test]
    fn bpe_larger_vocab_and_custom_corpus() {
        // The built-in corpus is big enough for the "small" preset's 2048–4096.
        let t = train_from_corpus(
            None,
            &BpeOptions {
                vocab_size: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(t.vocab_size, 4096);
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.txt");
        fs::write(&corpus, "tiny corpus, few merges\n".repeat(3)).unwrap();
        let opts = BpeOptions {
            vocab_size: 2048,
            ..Default::default()
        };
        let trained = train_from_corpus(Some(&corpus), &opts).unwrap();
        // A small corpus runs out of merges: the actual size is reported.
        assert!(trained.vocab_size < 300, "{}", trained.vocab_size);
        let tok = trained.tokenizer;
        let ids = tok.encode("unseen words 🎉", false).unwrap();
        assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), "unseen words 🎉");
    }

    #[test]
    fn bpe_bad_input_is_an_error() {
        assert!(train(
            ["abc"],
            &BpeOptions {
                vocab_size: 100,
                ..Default::default()
            }
        )
        .is_err());
        assert!(train(Vec::<String>::new(), &BpeOptions::default()).is_err());
        let err = train_from_corpus(
            Some(Path::new("/nonexistent/corpus.txt")),
            &BpeOptions::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/corpus.txt"));
    }
}
