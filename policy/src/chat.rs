//! Chat formatting: render a checkpoint's Jinja `chat_template` exactly like
//! transformers' `apply_chat_template`, tokenize it, and find which tokens belong
//! to which message.
//!
//! Rendering uses minijinja configured like transformers' sandboxed Jinja
//! environment (`trim_blocks`, `lstrip_blocks`, no autoescape, the
//! `raise_exception` / `strftime_now` globals, a `tojson` that behaves like Python's
//! `json.dumps`) plus Python compatibility shims (`str.strip()` & co, Python
//! printing of `True` / `None` / floats / lists). Templates are data from the
//! checkpoint; message contents are data too and are never re-evaluated, so text such
//! as `{{` or `<|eot_id|>` inside a message is rendered verbatim (and, as in
//! transformers, a special-token string in the text tokenizes as that special token).
//!
//! Checkpoints without a template get a built-in one: Llama-3 when the vocabulary has
//! the Llama-3 header tokens, Llama-2-chat (`[INST] <<SYS>>`) otherwise. Both live in
//! `src/templates/*.jinja`, shared with `scripts/make_chat_fixtures.py`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, Error};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

mod pyjinja;

/// Value type templates see (re-exported so callers can pass `tools` etc. without a
/// direct minijinja dependency). Parse JSON into it with `serde_json::from_str` to keep
/// the key order of objects, as Python does.
pub use minijinja::Value as TemplateValue;

/// The built-in Llama-2-chat template (the one Meta's `Llama-2-*-chat-hf` ship).
pub const LLAMA2_TEMPLATE: &str = include_str!("templates/llama2.jinja");
/// The built-in Llama-3 template (Meta's `Llama-3-*-Instruct`).
pub const LLAMA3_TEMPLATE: &str = include_str!("templates/llama3.jinja");

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message. Extra fields (`name`, `tool_calls`, ...) are kept and passed to
/// the template like transformers does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text.
    pub content: String,
    /// Any other fields of the message object.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            extra: Default::default(),
        }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Reads messages from a JSON file holding either a list of messages or an object
/// with a `"messages"` list.
pub fn load_messages(path: &Path) -> Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_messages(&text).with_context(|| format!("{} does not hold chat messages", path.display()))
}

/// Parses messages from JSON text (a list, or an object with a `"messages"` list).
pub fn parse_messages(text: &str) -> Result<Vec<Message>> {
    let value: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
    let list = match value {
        serde_json::Value::Object(mut m) => m.remove("messages").ok_or_else(|| {
            anyhow!("expected a list of messages or an object with a \"messages\" list")
        })?,
        other => other,
    };
    let messages: Vec<Message> = serde_json::from_value(list)
        .context("expected a list of {\"role\": string, \"content\": string} objects")?;
    Ok(messages)
}

/// The built-in templates for checkpoints that carry none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// `<s>[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST] assistant </s>`.
    Llama2,
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
    Llama3,
}

impl BuiltinTemplate {
    /// The template source.
    pub fn source(self) -> &'static str {
        match self {
            BuiltinTemplate::Llama2 => LLAMA2_TEMPLATE,
            BuiltinTemplate::Llama3 => LLAMA3_TEMPLATE,
        }
    }

    /// Llama-3 when the vocabulary has its header / end-of-turn tokens, else Llama-2.
    pub fn for_tokenizer(tok: &Tokenizer) -> Self {
        let has = |t: &str| tok.token_to_id(t).is_some();
        if has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>") {
            BuiltinTemplate::Llama3
        } else {
            BuiltinTemplate::Llama2
        }
    }
}

/// Per-render settings beyond the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Append the header that asks the model for an assistant reply.
    pub add_generation_prompt: bool,
    /// Tool schemas (`tools` in the template; `none` when unset, as in transformers).
    pub tools: Option<TemplateValue>,
    /// RAG documents (`documents` in the template; `none` when unset).
    pub documents: Option<TemplateValue>,
    /// Other template variables, e.g. `date_string`; they override special tokens
    /// of the same name, as transformers' `**kwargs` do.
    pub extra: BTreeMap<String, TemplateValue>,
    /// Clock for `strftime_now`; `None` = local time now. Fix it for reproducible output.
    pub now: Option<chrono::NaiveDateTime>,
}

impl RenderOptions {
    /// Options with only `add_generation_prompt` set.
    pub fn generation_prompt(add_generation_prompt: bool) -> Self {
        Self {
            add_generation_prompt,
            ..Default::default()
        }
    }
}

/// Where a [`ChatFormat`]'s template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The checkpoint's own template (default or the named one).
    Checkpoint(Option<String>),
    /// A built-in template (the checkpoint has none).
    Builtin(BuiltinTemplate),
    /// A template string given by the caller.
    Custom,
}

/// A compiled chat template plus the special-token strings it is rendered with.
#[derive(Clone)]
pub struct ChatFormat {
    env: Arc<Environment<'static>>,
    source: TemplateSource,
    template: String,
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatFormat")
            .field("source", &self.source)
            .finish()
    }
}

/// A rendered + tokenized conversation with per-token ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenizedChat {
    /// The rendered text (what `apply_chat_template(tokenize=False)` returns).
    pub text: String,
    /// Token ids of `text` (no extra BOS: the template writes its own).
    pub ids: Vec<u32>,
    /// Per token, its byte range in `text`.
    pub byte_offsets: Vec<(usize, usize)>,
    /// Per token, the index of the message it belongs to; `None` for text after the
    /// last message (the generation prompt).
    pub message_index: Vec<Option<usize>>,
    /// Per token: true for tokens of assistant replies (the reply text and its
    /// end-of-turn token, not the role header) — the tokens an SFT loss trains on.
    pub assistant_mask: Vec<bool>,
    /// Role of each message (indexed like the input messages).
    pub roles: Vec<String>,
    /// Per message, its byte range in `text` (headers and end-of-turn included).
    pub message_spans: Vec<Range<usize>>,
}

impl TokenizedChat {
    /// Role of the message token `i` belongs to.
    pub fn token_role(&self, i: usize) -> Option<&str> {
        self.message_index
            .get(i)
            .copied()
            .flatten()
            .map(|m| self.roles[m].as_str())
    }

    /// Token index range of message `m` (empty when it owns no token).
    pub fn message_token_range(&self, m: usize) -> Range<usize> {
        let first = self.message_index.iter().position(|&x| x == Some(m));
        match first {
            None => 0..0,
            Some(s) => {
                let len = self.message_index[s..]
                    .iter()
                    .take_while(|&&x| x == Some(m))
                    .count();
                s..s + len
            }
        }
    }
}

/// Prompt and response ids whose concatenation is the tokenized conversation
/// `prompt + [assistant(completion)]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptCompletion {
    /// Tokens of the prompt, generation header included.
    pub prompt_ids: Vec<u32>,
    /// Tokens of the reply, end-of-turn token included.
    pub completion_ids: Vec<u32>,
    /// Rendered prompt text (`prompt_ids` decode to it).
    pub prompt_text: String,
    /// Rendered completion text.
    pub completion_text: String,
}

impl ChatFormat {
    /// The tokenizer's own default chat template, or the built-in one it needs.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        Self::from_tokenizer_named(tok, None)
    }

    /// The tokenizer's template called `name` (`None` = default). A missing default
    /// falls back to a built-in template; a missing *named* template is an error.
    pub fn from_tokenizer_named(tok: &Tokenizer, name: Option<&str>) -> Result<Self> {
        if let Some(t) = tok.chat_template(name) {
            let src = TemplateSource::Checkpoint(name.map(str::to_owned));
            return Self::build(t, src, tok)
                .with_context(|| format!("chat template of {}", tok.source().display()));
        }
        if let Some(n) = name {
            let names: Vec<&String> = tok.chat_templates().named.keys().collect();
            bail!(
                "{} has no chat template named {n:?} (it has {names:?})",
                tok.source().display()
            );
        }
        if !tok.chat_templates().named.is_empty() {
            let names: Vec<&String> = tok.chat_templates().named.keys().collect();
            bail!(
                "{} has several chat templates but no default; pick one of {names:?}",
                tok.source().display()
            );
        }
        Self::builtin(BuiltinTemplate::for_tokenizer(tok), tok)
    }

    /// A built-in template with the tokenizer's special tokens.
    pub fn builtin(which: BuiltinTemplate, tok: &Tokenizer) -> Result<Self> {
        Self::build(which.source(), TemplateSource::Builtin(which), tok)
    }

    /// A caller-supplied template with the tokenizer's special tokens.
    pub fn with_template(template: &str, tok: &Tokenizer) -> Result<Self> {
        Self::build(template, TemplateSource::Custom, tok)
    }

    /// A template with explicit special-token strings (`bos_token` → `<s>`, ...),
    /// for rendering without a tokenizer.
    pub fn from_source(template: &str, special_tokens: &[(&str, &str)]) -> Result<Self> {
        let special = special_tokens
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::compile(template, TemplateSource::Custom, special)
    }

    fn build(template: &str, source: TemplateSource, tok: &Tokenizer) -> Result<Self> {
        let special = tok
            .special_tokens_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.content.clone()))
            .collect();
        Self::compile(template, source, special)
    }

    fn compile(
        template: &str,
        source: TemplateSource,
        special_tokens: Vec<(String, String)>,
    ) -> Result<Self> {
        let env = pyjinja::environment(template)
            .map_err(|e| anyhow!("invalid chat template: {}", describe(&e)))?;
        Ok(Self {
            env: Arc::new(env),
            source,
            template: template.to_owned(),
            special_tokens,
        })
    }

    /// Where the template came from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The template text.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Renders `messages` like `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            &RenderOptions::generation_prompt(add_generation_prompt),
        )
    }

    /// Renders with full options (tools, documents, extra variables, fixed clock).
    pub fn render_with(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        if messages.is_empty() {
            // transformers refuses empty conversations too.
            bail!("cannot apply a chat template to an empty conversation");
        }
        self.render_raw(messages, opts)
    }

    fn render_raw(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("{}", describe(&e)))?;
        let now = opts
            .now
            .unwrap_or_else(|| chrono::Local::now().naive_local());
        let mut ctx: BTreeMap<String, TemplateValue> = BTreeMap::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), TemplateValue::from(v.as_str()));
        }
        ctx.insert(
            "messages".into(),
            messages.iter().map(message_value).collect(),
        );
        ctx.insert(
            "tools".into(),
            opts.tools.clone().unwrap_or(TemplateValue::from(())),
        );
        ctx.insert(
            "documents".into(),
            opts.documents.clone().unwrap_or(TemplateValue::from(())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            TemplateValue::from(opts.add_generation_prompt),
        );
        ctx.insert("strftime_now".into(), pyjinja::strftime_now(now));
        for (k, v) in &opts.extra {
            ctx.insert(k.clone(), v.clone());
        }
        tmpl.render(ctx)
            .map_err(|e| anyhow!("rendering the chat template failed: {}", describe(&e)))
    }

    /// Rendered text and its ids, like `apply_chat_template(tokenize=True)`
    /// (the text is tokenized without adding special tokens).
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>)> {
        let text = self.render(messages, add_generation_prompt)?;
        let ids = tok.encode(&text, false)?;
        Ok((text, ids))
    }

    /// Renders and tokenizes `messages`, and tells for every token which message it
    /// belongs to and whether it is part of an assistant reply.
    ///
    /// Message boundaries come from rendering growing prefixes of the conversation:
    /// message `k` ends where the rendering of `messages[..=k]` ends inside the full
    /// rendering, and an assistant reply starts where the rendering of `messages[..k]`
    /// *with* the generation prompt ends. A template that appends text after the
    /// last message even without `add_generation_prompt` (like the shared Llama-3
    /// copy) is handled by recognising that trailer. Templates whose rendering of a
    /// prefix is not a prefix of the full rendering (e.g. ones that rewrite earlier
    /// turns) give an error. A token belongs to the message its first character is in.
    pub fn tokenize_conversation(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<TokenizedChat> {
        let mut opts = RenderOptions::generation_prompt(add_generation_prompt);
        // One clock for all the prefix renders, so a date in the template cannot change between them.
        opts.now = Some(chrono::Local::now().naive_local());
        self.tokenize_conversation_with(tok, messages, &opts)
    }

    /// [`Self::tokenize_conversation`] with full render options.
    pub fn tokenize_conversation_with(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        opts: &RenderOptions,
    ) -> Result<TokenizedChat> {
        let text = self.render_with(messages, opts)?;
        let (spans, reply_starts) = self.message_spans(messages, &text, opts)?;
        let enc = tok.encode_with_byte_offsets(&text, false)?;
        let mut message_index = Vec::with_capacity(enc.ids.len());
        let mut assistant_mask = Vec::with_capacity(enc.ids.len());
        for &(start, _) in &enc.offsets {
            let owner = spans.iter().position(|r| r.contains(&start));
            let in_reply = owner
                .map(|m| messages[m].role == "assistant" && start >= reply_starts[m])
                .unwrap_or(false);
            message_index.push(owner);
            assistant_mask.push(in_reply);
        }
        Ok(TokenizedChat {
            text,
            ids: enc.ids,
            byte_offsets: enc.offsets,
            message_index,
            assistant_mask,
            roles: messages.iter().map(|m| m.role.clone()).collect(),
            message_spans: spans,
        })
    }

    /// Byte spans of every message in `full`, and where each message's reply text starts.
    fn message_spans(
        &self,
        messages: &[Message],
        full: &str,
        opts: &RenderOptions,
    ) -> Result<(Vec<Range<usize>>, Vec<usize>)> {
        let with_gen = |gen: bool| RenderOptions {
            add_generation_prompt: gen,
            ..opts.clone()
        };
        let (no_gen, yes_gen) = (with_gen(false), with_gen(true));
        // Text the template emits after the messages even without a generation prompt.
        let trailer = self.render_raw(&[], &no_gen).ok().filter(|t| !t.is_empty());
        let n = messages.len();
        let mut ends = Vec::with_capacity(n);
        for k in 1..=n {
            let prefix = self.render_raw(&messages[..k], &no_gen).with_context(|| {
                format!("rendering the first {k} message(s) to find message boundaries")
            })?;
            let trimmed = trailer
                .as_deref()
                .and_then(|t| prefix.strip_suffix(t))
                .filter(|p| full.starts_with(p));
            let end = match trimmed {
                Some(p) => p.len(),
                None if full.starts_with(&prefix) => prefix.len(),
                None => bail!(
                    "the chat template is not prefix-stable: rendering the first {k} message(s) \
                     is not a prefix of rendering all {n}, so token roles cannot be assigned"
                ),
            };
            let last = ends.last().copied().unwrap_or(0);
            if end < last {
                bail!(
                    "the chat template rendered message {} before message {}",
                    k - 1,
                    k - 2
                );
            }
            ends.push(end);
        }
        let mut spans = Vec::with_capacity(n);
        let mut reply_starts = Vec::with_capacity(n);
        let mut start = 0;
        for (k, &end) in ends.iter().enumerate() {
            let mut reply = start;
            if messages[k].role == "assistant" && k > 0 {
                // The generation header belongs to the prompt, not to the reply.
                if let Ok(p) = self.render_raw(&messages[..k], &yes_gen) {
                    if full.starts_with(&p) && p.len() >= start && p.len() <= end {
                        reply = p.len();
                    }
                }
            }
            spans.push(start..end);
            reply_starts.push(reply);
            start = end;
        }
        Ok((spans, reply_starts))
    }

    /// Splits `prompt + [assistant(completion)]` into prompt ids (generation header
    /// included) and completion ids (reply and its end-of-turn token), such that
    /// `prompt_ids ++ completion_ids` equals the tokenized conversation. Text a
    /// template appends after the last message regardless of `add_generation_prompt`
    /// is not part of either.
    pub fn split_prompt_completion(
        &self,
        tok: &Tokenizer,
        prompt: &[Message],
        completion: &str,
    ) -> Result<PromptCompletion> {
        if prompt.is_empty() {
            bail!("the prompt has no messages");
        }
        let mut messages = prompt.to_vec();
        messages.push(Message::assistant(completion));
        let chat = self.tokenize_conversation(tok, &messages, false)?;
        let last = messages.len() - 1;
        let span = chat.message_spans[last].clone();
        let mask_positions: Vec<usize> = (0..chat.ids.len())
            .filter(|&i| chat.assistant_mask[i] && chat.message_index[i] == Some(last))
            .collect();
        let end_tok = chat
            .message_index
            .iter()
            .rposition(|&m| m == Some(last))
            .map(|i| i + 1)
            .unwrap_or(0);
        let split = match mask_positions.first() {
            Some(&i) => i,
            None => end_tok,
        };
        if mask_positions
            .iter()
            .enumerate()
            .any(|(j, &i)| i != split + j)
        {
            bail!("the completion's tokens are not contiguous in the rendered conversation");
        }
        let split_byte = chat
            .byte_offsets
            .get(split)
            .map(|o| o.0)
            .unwrap_or(span.end);
        Ok(PromptCompletion {
            prompt_ids: chat.ids[..split].to_vec(),
            completion_ids: chat.ids[split..end_tok.max(split)].to_vec(),
            prompt_text: chat.text[..split_byte].to_owned(),
            completion_text: chat.text[split_byte..span.end.max(split_byte)].to_owned(),
        })
    }
}

/// Renders with the tokenizer's template (or the built-in fallback) and tokenizes:
/// `(text, ids)` exactly as `apply_chat_template` gives them.
pub fn apply_chat_template(
    tok: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<(String, Vec<u32>)> {
    ChatFormat::from_tokenizer(tok)?.encode(tok, messages, add_generation_prompt)
}

/// [`ChatFormat::tokenize_conversation`] with the tokenizer's template.
pub fn tokenize_conversation(
    tok: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<TokenizedChat> {
    ChatFormat::from_tokenizer(tok)?.tokenize_conversation(tok, messages, add_generation_prompt)
}

/// [`ChatFormat::split_prompt_completion`] with the tokenizer's template.
pub fn split_prompt_completion(
    tok: &Tokenizer,
    prompt: &[Message],
    completion: &str,
) -> Result<PromptCompletion> {
    ChatFormat::from_tokenizer(tok)?.split_prompt_completion(tok, prompt, completion)
}

/// `rlhf policy render`: what the model sees for a conversation, as
/// `{"text": ..., "ids": [...]}`. Needs only the tokenizer files in `dir`.
pub fn render_command(
    dir: &Path,
    messages_json: &Path,
    add_generation_prompt: bool,
) -> Result<serde_json::Value> {
    let tok = Tokenizer::load(dir)?;
    let messages = load_messages(messages_json)?;
    let (text, ids) = apply_chat_template(&tok, &messages, add_generation_prompt)?;
    Ok(serde_json::json!({ "text": text, "ids": ids }))
}

/// A message as the template sees it: `role`, `content`, then the extra fields, with
/// `null` fields dropped (transformers drops them so `'tool_calls' in message` is false).
fn message_value(m: &Message) -> TemplateValue {
    let mut fields: Vec<(String, TemplateValue)> = vec![
        ("role".into(), TemplateValue::from(m.role.as_str())),
        ("content".into(), TemplateValue::from(m.content.as_str())),
    ];
    for (k, v) in &m.extra {
        if !v.is_null() && k != "role" && k != "content" {
            fields.push((k.clone(), TemplateValue::from_serialize(v)));
        }
    }
    fields.into_iter().collect()
}

/// minijinja errors with their template location and cause chain.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::pyjinja::*;
    use super::*;

    fn render(template: &str, messages: &[Message], gen: bool) -> Result<String> {
        ChatFormat::from_source(template, &[("bos_token", "<s>"), ("eos_token", "</s>")])?
            .render(messages, gen)
    }

    #[test]
    fn chat_python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.0, "0.0"),
            (1e300, "1e+300"),
            (2.71, "2.71"),
        ] {
            assert_eq!(py_float_repr(f, false), s, "{f}");
        }
        assert_eq!(py_float_repr(f64::NAN, true), "NaN");
    }

    #[test]
    fn chat_python_printing_and_methods() {
        let m = [Message::user("  Hi There \u{1f}")];
        let out = render(
            "{{ messages[0].content.strip() }}|{{ messages[0].content|trim }}|{{ add_generation_prompt }}|{{ none }}|{{ [1, 'a', true, 2.0] }}|{{ {'k': none} }}|{{ 'abc'.find('c') }}|{{ 'x,y'.split(',') }}|{{ 'hi'.upper() }}",
            &m,
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            "Hi There|Hi There|True|None|[1, 'a', True, 2.0]|{'k': None}|2|['x', 'y']|HI"
        );
    }

    #[test]
    fn chat_tojson_like_python() {
        let opts = RenderOptions {
            extra: [(
                "x".to_string(),
                serde_json::from_str::<TemplateValue>(
                    r#"{"b": 1, "a": [1.5, "é<>&", null, true], "c": {}}"#,
                )
                .unwrap(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let f = ChatFormat::from_source(
            "{{ x|tojson }}\n{{ x|tojson(indent=2) }}\n{{ x|tojson(ensure_ascii=true, sort_keys=true) }}\n{{ x|tojson(separators=(',', ':')) }}",
            &[],
        )
        .unwrap();
        let out = f.render_with(&[Message::user("u")], &opts).unwrap();
        let expected = r#"{"b": 1, "a": [1.5, "é<>&", null, true], "c": {}}
{
  "b": 1,
  "a": [
    1.5,
    "é<>&",
    null,
    true
  ],
  "c": {}
}
{"a": [1.5, "\u00e9<>&", null, true], "b": 1, "c": {}}
{"b":1,"a":[1.5,"é<>&",null,true],"c":{}}"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn chat_trim_and_lstrip_blocks() {
        let t = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}";
        let out = render(t, &[Message::user("a"), Message::user("b")], false).unwrap();
        assert_eq!(out, "[a]\n[b]\n");
    }

    #[test]
    fn chat_generation_tags_are_accepted() {
        let t = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }} {%- endgeneration -%}{% else %}U:{{ m.content }}|{% endif %}{% endfor %}";
        let out = render(t, &[Message::user("a"), Message::assistant("b")], false).unwrap();
        assert_eq!(out, "U:a|b");
        assert_eq!(
            strip_generation_tags("{%generation%}x{%+ endgeneration +%}"),
            "{% if true %}x{%+ endif +%}"
        );
    }

    #[test]
    fn chat_raise_exception_and_bad_templates_are_errors() {
        let err = render(LLAMA2_TEMPLATE, &[Message::assistant("a")], false).unwrap_err();
        assert!(
            format!("{err:#}").contains("Conversation roles must alternate"),
            "{err:#}"
        );
        let err = ChatFormat::from_source("{% for %}", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid chat template"),
            "{err:#}"
        );
        let err = render(
            "{{ messages[0].content + 1 }}",
            &[Message::user("a")],
            false,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("rendering the chat template failed"),
            "{err:#}"
        );
        assert!(render(LLAMA3_TEMPLATE, &[], false).is_err());
        assert!(render("{{ strftime_now('%Q') }}", &[Message::user("a")], false).is_err());
    }

    #[test]
    fn chat_strftime_now_uses_given_clock() {
        let f = ChatFormat::from_source("{{ strftime_now('%d %b %Y') }}", &[]).unwrap();
        let now = chrono::NaiveDate::from_ymd_opt(2024, 7, 26)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let out = f
            .render_with(
                &[Message::user("a")],
                &RenderOptions {
                    now: Some(now),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out, "26 Jul 2024");
    }

    #[test]
    fn chat_hostile_content_is_data() {
        let m = [Message::user(
            "{{ raise_exception('x') }} {% if %} <|eot_id|>",
        )];
        let out = render(LLAMA3_TEMPLATE, &m, false).unwrap();
        assert!(out.contains("{{ raise_exception('x') }} {% if %} <|eot_id|>"));
    }

    #[test]
    fn chat_unstable_template_gives_a_clear_role_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tokenizers/llama3");
        if !dir.is_dir() {
            return;
        }
        let tok = Tokenizer::load(&dir).unwrap();
        // Prints the number of messages first: no prefix of the conversation renders as a prefix.
        let f = ChatFormat::with_template(
            "{{ messages|length }}{% for m in messages %}{{ m.content }}{% endfor %}",
            &tok,
        )
        .unwrap();
        let err = f
            .tokenize_conversation(&tok, &[Message::user("a"), Message::assistant("b")], false)
            .unwrap_err();
        assert!(format!("{err:#}").contains("not prefix-stable"), "{err:#}");
        // Plain rendering still works.
        assert_eq!(
            f.render(&[Message::user("a"), Message::assistant("b")], false)
                .unwrap(),
            "2ab"
        );
    }

    #[test]
    fn chat_messages_parse() {
        let m = parse_messages(r#"{"messages": [{"role": "user", "content": "hi", "name": "bob", "tool_calls": null}]}"#).unwrap();
        assert_eq!(m[0].extra["name"], "bob");
        let out = render(
            "{{ messages[0] }}|{{ 'tool_calls' in messages[0] }}|{{ messages|tojson }}",
            &m,
            false,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{'role': 'user', 'content': 'hi', 'name': 'bob'}|False|[{"role": "user", "content": "hi", "name": "bob"}]"#
        );
        assert!(parse_messages(r#"[{"role": "user"}]"#).is_err());
        assert!(parse_messages("{}").is_err());
        assert!(parse_messages("nope").is_err());
    }
}
