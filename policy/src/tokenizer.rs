//! Hugging Face tokenizers: `tokenizer.json` + `tokenizer_config.json` (+ chat templates).
//!
//! [`Tokenizer`] wraps [`tokenizers::Tokenizer`] and adds what lives next to it in a
//! checkpoint directory: the named special tokens, the chat template(s) and the
//! model's maximum length. Behaviour follows what `transformers` (5.x, the version
//! the parity fixtures are generated with) does when it loads the same directory:
//!
//! * the `post_processor` stored in `tokenizer.json` decides whether BOS/EOS are
//!   added by `encode(.., add_special_tokens = true)`; `add_bos_token` /
//!   `add_eos_token` in `tokenizer_config.json` are reported but, as in
//!   transformers 5, do not change encoding;
//! * padding and truncation stored in `tokenizer.json` are ignored (transformers
//!   disables them for every call that does not ask for them);
//! * a `tokenizer_class` of `LlamaTokenizer[Fast]` on a non-byte-level
//!   (SentencePiece-style) `tokenizer.json` gets the normalizer / pre-tokenizer /
//!   decoder that transformers 5's `LlamaTokenizer` rebuilds (a `Metaspace`
//!   pre-tokenizer), which differs from the file's own pipeline for text that starts
//!   with a space;
//! * chat templates come from `chat_template.jinja` and
//!   `additional_chat_templates/*.jinja` when present, otherwise from the
//!   `chat_template` entry of `tokenizer_config.json` (a string or a list of
//!   `{name, template}`).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use tokenizers::AddedToken;

/// File names inside a Hugging Face checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Tokenizer settings (special tokens, chat template, ...).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Stand-alone default chat template (transformers >= 4.43 saves it here).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// Folder of additional named chat templates (`NAME.jinja`).
pub const CHAT_TEMPLATE_DIR: &str = "additional_chat_templates";

/// transformers' `VERY_LARGE_INTEGER`-style `model_max_length` values mean "no limit".
const NO_LIMIT_THRESHOLD: f64 = 1e18;

/// The named special-token attributes transformers passes to chat templates
/// (`SPECIAL_TOKENS_ATTRIBUTES`), in its order.
pub const SPECIAL_TOKEN_ATTRIBUTES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A named special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialToken {
    /// The token's text, e.g. `<|begin_of_text|>`.
    pub content: String,
    /// Its id in the vocabulary.
    pub id: u32,
}

/// The chat templates a tokenizer carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatTemplates {
    /// The template used when no name is asked for (`"default"` in a named list).
    pub default: Option<String>,
    /// Other named templates, e.g. `"tool_use"`.
    pub named: BTreeMap<String, String>,
}

impl ChatTemplates {
    /// The template called `name`, or the default one for `None`.
    ///
    /// Like transformers, a set of named templates without a `"default"` entry
    /// has no default.
    pub fn get(&self, name: Option<&str>) -> Option<&str> {
        match name {
            None | Some("default") => self.default.as_deref(),
            Some(n) => self.named.get(n).map(String::as_str),
        }
    }

    /// True when there is no template at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.named.is_empty()
    }
}

/// Result of [`Tokenizer::encode_with_offsets`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token, the `[start, end)` range in *characters* (Unicode scalar values)
    /// of the input text it came from; special tokens added by the post-processor
    /// get `(0, 0)`, like in transformers' `return_offsets_mapping`.
    pub offsets: Vec<(usize, usize)>,
}

/// A Hugging Face tokenizer plus its `tokenizer_config.json` settings.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    special_map: BTreeMap<String, SpecialToken>,
    extra_special: Vec<SpecialToken>,
    special_ids: HashSet<u32>,
    add_bos_token: bool,
    add_eos_token: bool,
    clean_up_tokenization_spaces: bool,
    is_bpe: bool,
    chat_templates: ChatTemplates,
    model_max_length: Option<usize>,
    tokenizer_class: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner tokenizer's Debug prints the whole vocabulary: keep it out.
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.special_map)
            .field("has_chat_template", &!self.chat_templates.is_empty())
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A special token entry in `tokenizer_config.json`: a string or an AddedToken dict.
fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => m.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

fn read_templates_from_config(config: &Json, path: &Path) -> Result<ChatTemplates> {
    let mut out = ChatTemplates::default();
    match config.get("chat_template") {
        None | Some(Json::Null) => {}
        Some(Json::String(s)) => out.default = Some(s.clone()),
        Some(Json::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                let (Some(name), Some(template)) = (name, template) else {
                    bail!(
                        "{}: chat_template[{i}] must be an object with string fields \"name\" and \"template\"",
                        path.display()
                    );
                };
                if name == "default" {
                    out.default = Some(template.to_owned());
                } else {
                    out.named.insert(name.to_owned(), template.to_owned());
                }
            }
        }
        Some(other) => bail!(
            "{}: chat_template must be a string or a list of {{name, template}}, found {}",
            path.display(),
            json_kind(other)
        ),
    }
    Ok(out)
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// Stand-alone template files take priority over `tokenizer_config.json`, as in transformers.
fn read_template_files(dir: &Path) -> Result<Option<ChatTemplates>> {
    let mut out = ChatTemplates::default();
    let mut found = false;
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if file.is_file() {
        out.default = Some(
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?,
        );
        found = true;
    }
    let extra = dir.join(CHAT_TEMPLATE_DIR);
    if extra.is_dir() {
        let entries =
            fs::read_dir(&extra).with_context(|| format!("cannot list {}", extra.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", extra.display()))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("jinja") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if name == "default" {
                out.default = Some(text);
            } else {
                out.named.insert(name.to_owned(), text);
            }
            found = true;
        }
    }
    Ok(found.then_some(out))
}

/// transformers 5's `LlamaTokenizer.__init__` ignores the file's normalizer,
/// pre-tokenizer and decoder and installs its own (see module docs). Mirror that so
/// ids match what `AutoTokenizer` produces for the same directory.
fn apply_llama_tokenizer_pipeline(tok_json: &mut Json, config: &Json) {
    let legacy = config
        .get("legacy")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    let prepend_scheme = match (add_prefix_space, legacy) {
        (false, _) => "never",
        (true, true) => "always",
        (true, false) => "first",
    };
    let Some(obj) = tok_json.as_object_mut() else {
        return;
    };
    obj.insert("normalizer".into(), Json::Null);
    obj.insert(
        "pre_tokenizer".into(),
        serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend_scheme, "split": false}),
    );
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    obj.insert(
        "decoder".into(),
        serde_json::json!({"type": "Sequence", "decoders": decoders}),
    );
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from a
    /// checkpoint directory, plus any `chat_template.jinja` /
    /// `additional_chat_templates/*.jinja`.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "tokenizer directory {} does not exist or is not a directory",
                dir.display()
            );
        }
        let tok_path = dir.join(TOKENIZER_FILE);
        if !tok_path.is_file() {
            bail!(
                "{} not found: a model directory needs a Hugging Face {TOKENIZER_FILE}",
                tok_path.display()
            );
        }
        let cfg_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = if cfg_path.is_file() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let mut tok = Self::from_parts(&tok_path, config.as_ref(), &cfg_path)?;
        if let Some(files) = read_template_files(dir)? {
            tok.chat_templates = files;
        }
        tok.source = dir.to_path_buf();
        Ok(tok)
    }

    /// Builds a tokenizer from a `tokenizer.json` path and an already-parsed
    /// `tokenizer_config.json` (`cfg_path` is only used in error messages).
    fn from_parts(tok_path: &Path, config: Option<&Json>, cfg_path: &Path) -> Result<Self> {
        let empty = Json::Object(Default::default());
        let config = config.unwrap_or(&empty);
        if !config.is_object() {
            bail!(
                "{} must hold a JSON object, found {}",
                cfg_path.display(),
                json_kind(config)
            );
        }
        let raw = fs::read_to_string(tok_path)
            .with_context(|| format!("cannot read {}", tok_path.display()))?;
        let tokenizer_class = config
            .get("tokenizer_class")
            .and_then(Json::as_str)
            .map(str::to_owned);
        let is_llama_class = tokenizer_class
            .as_deref()
            .map(|c| c.strip_suffix("Fast").unwrap_or(c) == "LlamaTokenizer")
            .unwrap_or(false);
        let invalid = |e: &dyn std::fmt::Display| {
            anyhow!(
                "{} is not a valid Hugging Face tokenizer file: {e}",
                tok_path.display()
            )
        };
        // Same test transformers uses to route byte-level files away from LlamaTokenizer.
        let mut inner: tokenizers::Tokenizer = if is_llama_class && !raw.contains("\"ByteLevel\"") {
            let mut tok_json: Json = serde_json::from_str(&raw)
                .with_context(|| format!("{} is not valid JSON", tok_path.display()))?;
            if tok_json.pointer("/model/type").and_then(Json::as_str) == Some("BPE") {
                apply_llama_tokenizer_pipeline(&mut tok_json, config);
            }
            serde_json::from_value(tok_json).map_err(|e| invalid(&e))?
        } else {
            // Straight from the text: parsing a 9 MB vocabulary twice would double load time.
            match serde_json::from_str(&raw) {
                Ok(t) => t,
                Err(e) if e.is_syntax() || e.is_eof() => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("{} is not valid JSON", tok_path.display()))
                }
                Err(e) => return Err(invalid(&e)),
            }
        };
        drop(raw);
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        // transformers turns stored padding/truncation off unless a call asks for them.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: cannot disable truncation: {e}", tok_path.display()))?;
        inner.with_padding(None);

        let get_bool = |key: &str, default: bool| -> Result<bool> {
            match config.get(key) {
                None | Some(Json::Null) => Ok(default),
                Some(Json::Bool(b)) => Ok(*b),
                Some(other) => bail!(
                    "{}: {key} must be a boolean, found {}",
                    cfg_path.display(),
                    json_kind(other)
                ),
            }
        };
        let add_bos_token = get_bool("add_bos_token", false)?;
        let add_eos_token = get_bool("add_eos_token", false)?;
        let clean_up_tokenization_spaces = get_bool("clean_up_tokenization_spaces", false)?;
        let model_max_length = match config.get("model_max_length") {
            None | Some(Json::Null) => None,
            Some(Json::Number(n)) => {
                let v = n.as_f64().unwrap_or(f64::INFINITY);
                if v.is_nan() || v < 0.0 {
                    bail!(
                        "{}: model_max_length must not be negative",
                        cfg_path.display()
                    );
                }
                (v < NO_LIMIT_THRESHOLD).then_some(v as usize)
            }
            Some(other) => bail!(
                "{}: model_max_length must be a number, found {}",
                cfg_path.display(),
                json_kind(other)
            ),
        };
        let chat_templates = read_templates_from_config(config, cfg_path)?;

        // Named special tokens; like transformers, ones missing from the vocabulary
        // (or present only as ordinary tokens) are registered as special added tokens.
        let mut names: Vec<(String, String)> = Vec::new();
        for attr in SPECIAL_TOKEN_ATTRIBUTES {
            match config.get(attr) {
                None | Some(Json::Null) => {}
                Some(v) => {
                    let content = token_content(v).ok_or_else(|| {
                        anyhow!(
                            "{}: {attr} must be a string or an object with \"content\", found {}",
                            cfg_path.display(),
                            json_kind(v)
                        )
                    })?;
                    names.push((attr.to_owned(), content));
                }
            }
        }
        let mut extra_names = Vec::new();
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(Json::Array(items)) = config.get(key) {
                extra_names.extend(items.iter().filter_map(token_content));
            }
        }
        let registered: HashSet<String> = inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        let to_add: Vec<AddedToken> = names
            .iter()
            .map(|(_, c)| c)
            .chain(extra_names.iter())
            .filter(|c| !registered.contains(*c))
            .map(|c| AddedToken::from(c.clone(), true).normalized(false))
            .collect();
        if !to_add.is_empty() {
            inner.add_special_tokens(&to_add);
        }
        let lookup = |content: &str| -> Result<SpecialToken> {
            let id = inner.token_to_id(content).ok_or_else(|| {
                anyhow!(
                    "special token {content:?} from {} is not in the vocabulary",
                    cfg_path.display()
                )
            })?;
            Ok(SpecialToken {
                content: content.to_owned(),
                id,
            })
        };
        let mut special_map = BTreeMap::new();
        for (attr, content) in &names {
            special_map.insert(attr.clone(), lookup(content)?);
        }
        let extra_special = extra_names
            .iter()
            .map(|c| lookup(c))
            .collect::<Result<Vec<_>>>()?;
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();

        Ok(Self {
            inner,
            source: tok_path.to_path_buf(),
            special_map,
            extra_special,
            special_ids,
            add_bos_token,
            add_eos_token,
            clean_up_tokenization_spaces,
            is_bpe,
            chat_templates,
            model_max_length,
            tokenizer_class,
        })
    }

    /// Where this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`. With `add_special_tokens` the `tokenizer.json`
    /// post-processor adds its tokens (e.g. BOS), like transformers' `encode`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing failed ({}): {e}", self.source.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Self::encode`] for many texts.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| self.encode(t.as_ref(), add_special_tokens))
            .collect()
    }

    /// Token ids plus per-token character offsets into `text`.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing failed ({}): {e}", self.source.display()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Token ids plus per-token *byte* offsets into `text` (for slicing Rust strings).
    pub fn encode_with_byte_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing failed ({}): {e}", self.source.display()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Text of `ids`. Ids outside the vocabulary are skipped (as transformers does).
    /// With `skip_special_tokens`, special tokens (BOS, EOS, `<|eot_id|>`, ...) are dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding failed ({}): {e}", self.source.display()))?;
        // transformers skips this clean-up for BPE models (it would corrupt them).
        if self.clean_up_tokenization_spaces && !self.is_bpe {
            return Ok(clean_up_tokenization(&text));
        }
        Ok(text)
    }

    /// Id of a token string (added tokens included), or `None`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id, or `None` when out of range.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included (transformers' `len(tokenizer)`):
    /// the smallest embedding size that covers every id this tokenizer produces.
    pub fn vocab_size(&self) -> usize {
        // Added tokens may sit anywhere (even past the model vocab), so take the max id.
        let max_added = self
            .inner
            .get_added_tokens_decoder()
            .keys()
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0);
        self.inner.get_vocab_size(true).max(max_added)
    }

    /// True when `id` is a special added token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Ids of all special added tokens, sorted.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.special_ids.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// A named special token (`"bos_token"`, `"eos_token"`, `"pad_token"`, ...).
    pub fn special_token(&self, attr: &str) -> Option<&SpecialToken> {
        self.special_map.get(attr)
    }

    /// All named special tokens that are set, keyed by attribute name.
    pub fn special_tokens_map(&self) -> &BTreeMap<String, SpecialToken> {
        &self.special_map
    }

    /// `additional_special_tokens` / `extra_special_tokens` from the config.
    pub fn extra_special_tokens(&self) -> &[SpecialToken] {
        &self.extra_special
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<&SpecialToken> {
        self.special_token("bos_token")
    }
    /// End-of-sequence token.
    pub fn eos(&self) -> Option<&SpecialToken> {
        self.special_token("eos_token")
    }
    /// Padding token.
    pub fn pad(&self) -> Option<&SpecialToken> {
        self.special_token("pad_token")
    }
    /// Unknown token.
    pub fn unk(&self) -> Option<&SpecialToken> {
        self.special_token("unk_token")
    }
    /// BOS id, if the tokenizer has a BOS token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos().map(|t| t.id)
    }
    /// EOS id, if the tokenizer has an EOS token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos().map(|t| t.id)
    }
    /// PAD id, if the tokenizer has a PAD token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad().map(|t| t.id)
    }
    /// UNK id, if the tokenizer has an UNK token.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk().map(|t| t.id)
    }

    /// `add_bos_token` from the config (informational: encoding follows `tokenizer.json`).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }
    /// `add_eos_token` from the config (informational: encoding follows `tokenizer.json`).
    pub fn add_eos_token(&self) -> bool {
        self.add_eos_token
    }

    /// `tokenizer_class` from the config.
    pub fn tokenizer_class(&self) -> Option<&str> {
        self.tokenizer_class.as_deref()
    }

    /// The model's maximum sequence length; `None` when unset or "unlimited".
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The checkpoint's chat templates (possibly none).
    pub fn chat_templates(&self) -> &ChatTemplates {
        &self.chat_templates
    }

    /// The chat template called `name` (`None` = default), if the checkpoint has it.
    pub fn chat_template(&self, name: Option<&str>) -> Option<&str> {
        self.chat_templates.get(name)
    }

    /// Replaces the chat templates (e.g. to force a built-in one).
    pub fn set_chat_templates(&mut self, templates: ChatTemplates) {
        self.chat_templates = templates;
    }
}

/// Tokenizer-related files a checkpoint directory may hold (besides the template folder).
pub const TOKENIZER_FILES: [&str; 5] = [
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
    "special_tokens_map.json",
    "tokenizer.model",
];

/// Copies the tokenizer files of checkpoint `from` into `to` (which must exist), byte
/// for byte — so a saved checkpoint keeps exactly the tokenizer it was loaded with.
/// Returns the paths written. `tokenizer.json` is required; the others are copied
/// when present.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    if !from.join(TOKENIZER_FILE).is_file() {
        bail!("{} has no {TOKENIZER_FILE} to copy", from.display());
    }
    let mut written = Vec::new();
    let copy = |src: &Path, dst: &Path, written: &mut Vec<PathBuf>| -> Result<()> {
        fs::copy(src, dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        written.push(dst.to_path_buf());
        Ok(())
    };
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            copy(&src, &to.join(name), &mut written)?;
        }
    }
    let extra = from.join(CHAT_TEMPLATE_DIR);
    if extra.is_dir() {
        let dst_dir = to.join(CHAT_TEMPLATE_DIR);
        fs::create_dir_all(&dst_dir)
            .with_context(|| format!("cannot create {}", dst_dir.display()))?;
        for entry in
            fs::read_dir(&extra).with_context(|| format!("cannot list {}", extra.display()))?
        {
            let src = entry
                .with_context(|| format!("cannot list {}", extra.display()))?
                .path();
            if src.is_file() {
                if let Some(name) = src.file_name() {
                    copy(&src, &dst_dir.join(name), &mut written)?;
                }
            }
        }
    }
    Ok(written)
}

/// transformers' `clean_up_tokenization` (only applied to non-BPE models).
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/tokenizers")
            .join(name)
    }

    #[test]
    fn tokenizer_missing_dir_is_a_clear_error() {
        let err = Tokenizer::load(Path::new("/nonexistent/model")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/model"), "{err:#}");
    }

    #[test]
    fn tokenizer_malformed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");

        fs::write(dir.path().join(TOKENIZER_FILE), "{ not json").unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");

        fs::write(dir.path().join(TOKENIZER_FILE), r#"{"model": 3}"#).unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a valid Hugging Face tokenizer"),
            "{err:#}"
        );
    }

    #[test]
    fn tokenizer_bad_config_is_a_clear_error() {
        let src = shared("llama3");
        if !src.is_dir() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::copy(src.join(TOKENIZER_FILE), dir.path().join(TOKENIZER_FILE)).unwrap();
        fs::write(dir.path().join(TOKENIZER_CONFIG_FILE), "[1,2]").unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains(TOKENIZER_CONFIG_FILE),
            "{err:#}"
        );
        fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": 5}"#,
        )
        .unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("chat_template"), "{err:#}");
        // Without a config the tokenizer still loads.
        fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
        let tok = Tokenizer::load(dir.path()).unwrap();
        assert!(tok.bos().is_none());
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(128009));
    }

    #[test]
    fn tokenizer_llama3_basics() {
        let dir = shared("llama3");
        if !dir.is_dir() {
            return;
        }
        let tok = Tokenizer::load(&dir).unwrap();
        assert_eq!(tok.bos_id(), Some(128000));
        assert_eq!(tok.eos_id(), Some(128001));
        assert_eq!(tok.vocab_size(), 128256);
        assert!(tok.is_special(128009));
        assert!(!tok.is_special(9906));
        assert_eq!(tok.model_max_length(), None);
        assert!(tok.chat_template(None).is_some());
        let enc = tok.encode_with_offsets("Hello wörld", false).unwrap();
        assert_eq!(enc.ids, vec![9906, 289, 9603, 509]);
        assert_eq!(enc.offsets.last().unwrap().1, 11);
        let text = tok.decode(&[128000, 9906, 1917], true).unwrap();
        assert_eq!(text, "Hello world");
        // Out-of-range ids are skipped, not a panic.
        assert_eq!(tok.decode(&[9906, 999_999], false).unwrap(), "Hello");
    }

    #[test]
    fn tokenizer_files_copy() {
        let src = shared("sentencepiece-bpe-32k");
        if !src.is_dir() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let written = copy_tokenizer_files(&src, dir.path()).unwrap();
        assert_eq!(written.len(), 2);
        let a = Tokenizer::load(&src).unwrap();
        let b = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(
            a.encode(" x  <s>y", true).unwrap(),
            b.encode(" x  <s>y", true).unwrap()
        );
        assert!(copy_tokenizer_files(dir.path().join("nope").as_path(), dir.path()).is_err());
    }

    #[test]
    fn tokenizer_template_files_take_priority() {
        let src = shared("llama3");
        if !src.is_dir() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::copy(src.join(TOKENIZER_FILE), dir.path().join(TOKENIZER_FILE)).unwrap();
        fs::copy(
            src.join(TOKENIZER_CONFIG_FILE),
            dir.path().join(TOKENIZER_CONFIG_FILE),
        )
        .unwrap();
        fs::write(
            dir.path().join(CHAT_TEMPLATE_FILE),
            "X{{ messages|length }}",
        )
        .unwrap();
        fs::create_dir(dir.path().join(CHAT_TEMPLATE_DIR)).unwrap();
        fs::write(
            dir.path().join(CHAT_TEMPLATE_DIR).join("tool_use.jinja"),
            "T",
        )
        .unwrap();
        let tok = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.chat_template(None), Some("X{{ messages|length }}"));
        assert_eq!(tok.chat_template(Some("tool_use")), Some("T"));
    }
}
