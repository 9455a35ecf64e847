//! Preference data: TRL-format JSONL (the annotation server's export) and
//! ranked comparisons, expanded to ordered pairs with their margins, and
//! tokenized for the reward model.
//!
//! Accepted lines (one JSON object each; blank lines are skipped):
//! - pairwise (TRL): `{"prompt"?, "chosen", "rejected", "margin"?, "strength"?}`
//!   where each text is a string or a list of chat messages (conversational
//!   form); without `prompt`, `chosen`/`rejected` are whole conversations or
//!   transcripts. `"tie": true` lines are skipped.
//! - ranked (k-way, also the server's raw per-labeler export):
//!   `{"prompt", "responses": [text | {"text": ...}], "ranking"?: [rank per
//!   response, 1 = best, equal = tie], "strength"?, "labeler"?, "comparison_id"?}`;
//!   without `ranking` the responses are best first. Every ordered pair of
//!   different ranks becomes a pair; ties are skipped.
//!
//! Margins: a `strength` label maps through the [`MarginTable`]; otherwise a
//! numeric `margin` is used as given; an all-zero table turns margins off.
use crate::loss::{MarginTable, Strength};
use anyhow::{bail, Context, Result};
use policy::chat::{apply_chat_template, Message};
use policy::tokenizer::Tokenizer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A prompt or a response: plain text or chat messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    Chat(Vec<Message>),
}

impl Content {
    /// Parses a string, a list of messages, or an object with `text`/`content`.
    pub fn from_json(v: &Value, field: &str) -> Result<Content> {
        match v {
            Value::String(s) => Ok(Content::Text(s.clone())),
            Value::Array(_) => Ok(Content::Chat(
                serde_json::from_value(v.clone()).with_context(|| format!("`{field}` must be a string or a list of {{\"role\", \"content\"}} messages"))?,
            )),
            Value::Object(o) => match o.get("text").or_else(|| o.get("content")) {
                Some(Value::String(s)) => Ok(Content::Text(s.clone())),
                _ => bail!("`{field}`: an object needs a string `text`"),
            },
            _ => bail!("`{field}` must be a string or a list of chat messages"),
        }
    }

    fn key(&self) -> String {
        match self {
            Content::Text(s) => format!("t:{s}"),
            Content::Chat(m) => format!("c:{}", serde_json::to_string(m).unwrap_or_default()),
        }
    }
}

/// One preference: `chosen` is preferred over `rejected` for `prompt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// Comparison this pair came from (pairs of one comparison stay in one split).
    pub group: String,
    pub prompt: Content,
    pub chosen: Content,
    pub rejected: Content,
    /// The margin `m` of the loss.
    pub margin: f32,
    /// The labeled strength, when given.
    pub strength: Option<Strength>,
    /// Who labeled it, when given.
    pub labeler: Option<String>,
}

/// How judgments of several labelers on one comparison are used.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Aggregation {
    /// Every labeler's judgment is its own pair (Llama-2).
    #[default]
    PerLabeler,
    /// One pair per response pair, in the majority's direction (ties
    /// skipped), margin averaged over the majority.
    Consensus,
}

/// Options for reading preference data.
#[derive(Clone, Copy, Debug, Default)]
pub struct DataOptions {
    pub margins: MarginTable,
    pub aggregation: Aggregation,
}

fn margin_of(
    obj: &serde_json::Map<String, Value>,
    table: &MarginTable,
) -> Result<(f32, Option<Strength>)> {
    let strength = match obj.get("strength") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Strength::parse(s)?),
        Some(Value::Number(n)) => Some(Strength::parse(&n.to_string())?),
        Some(other) => bail!("`strength` must be a name or a level 0..3, got {other}"),
    };
    if table.is_off() {
        return Ok((0.0, strength));
    }
    if let Some(s) = strength {
        return Ok((table.margin(s), Some(s)));
    }
    match obj.get("margin") {
        None | Some(Value::Null) => Ok((0.0, None)),
        Some(v) => {
            let m = v
                .as_f64()
                .filter(|x| x.is_finite())
                .with_context(|| format!("`margin` must be a finite number, got {v}"))?;
            Ok((m as f32, None))
        }
    }
}

/// Parses one JSONL line into pairs (`line_no` names the group when the line has no id).
pub fn parse_line(v: &Value, line_no: usize, table: &MarginTable) -> Result<Vec<Pair>> {
    let obj = v.as_object().context("each line must be a JSON object")?;
    if obj.get("tie").and_then(Value::as_bool) == Some(true) {
        return Ok(vec![]);
    }
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => Content::Text(String::new()),
        Some(p) => Content::from_json(p, "prompt")?,
    };
    let (margin, strength) = margin_of(obj, table)?;
    let labeler = obj
        .get("labeler")
        .or_else(|| obj.get("labeler_id"))
        .map(|l| {
            l.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| l.to_string())
        });
    let group = obj
        .get("comparison_id")
        .map(|c| format!("comparison:{c}"))
        .unwrap_or_else(|| format!("line:{line_no}"));
    if obj.contains_key("chosen") || obj.contains_key("rejected") {
        let chosen = Content::from_json(obj.get("chosen").context("missing `chosen`")?, "chosen")?;
        let rejected = Content::from_json(
            obj.get("rejected").context("missing `rejected`")?,
            "rejected",
        )?;
        return Ok(vec![Pair {
            group,
            prompt,
            chosen,
            rejected,
            margin,
            strength,
            labeler,
        }]);
    }
    let responses = obj
        .get("responses")
        .and_then(Value::as_array)
        .context("a line needs `chosen` and `rejected`, or `responses`")?;
    let mut texts = vec![];
    let mut positions = vec![];
    for (i, r) in responses.iter().enumerate() {
        texts.push(Content::from_json(r, &format!("responses[{i}]"))?);
        positions.push(
            r.get("position")
                .and_then(Value::as_u64)
                .map(|p| p as usize)
                .unwrap_or(i),
        );
    }
    if texts.len() < 2 {
        bail!("`responses` needs at least two responses to compare");
    }
    // ranks by display position (the server's export) or best first
    let ranks: Vec<u64> = match obj.get("ranking") {
        None | Some(Value::Null) => (1..=texts.len() as u64).collect(),
        Some(r) => {
            let r: Vec<u64> = serde_json::from_value(r.clone())
                .context("`ranking` must be a list of ranks (1 = best)")?;
            if r.len() != texts.len() {
                bail!(
                    "`ranking` has {} ranks for {} responses",
                    r.len(),
                    texts.len()
                );
            }
            positions
                .iter()
                .map(|&p| {
                    r.get(p)
                        .copied()
                        .with_context(|| format!("response position {p} has no rank"))
                })
                .collect::<Result<_>>()?
        }
    };
    let mut out = vec![];
    for i in 0..texts.len() {
        for j in 0..texts.len() {
            if ranks[i] < ranks[j] {
                out.push(Pair {
                    group: group.clone(),
                    prompt: prompt.clone(),
                    chosen: texts[i].clone(),
                    rejected: texts[j].clone(),
                    margin,
                    strength,
                    labeler: labeler.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Parses JSONL text (`source` names it in errors).
pub fn parse_pairs(text: &str, source: &str, opts: &DataOptions) -> Result<Vec<Pair>> {
    let mut pairs = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{source}: line {}: not valid JSON", i + 1))?;
        pairs.extend(
            parse_line(&v, i + 1, &opts.margins)
                .with_context(|| format!("{source}: line {}", i + 1))?,
        );
    }
    Ok(match opts.aggregation {
        Aggregation::PerLabeler => pairs,
        Aggregation::Consensus => consensus(pairs),
    })
}

/// Reads a JSONL preference file.
pub fn read_pairs(path: &Path, opts: &DataOptions) -> Result<Vec<Pair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_pairs(&text, &path.display().to_string(), opts)
}

/// Pairs from JSONL files, then (with a `server` URL and a researcher `token`)
/// from the annotation server's export filtered by `query`: the CLI's `--data`,
/// `--server` and `--token`.
pub fn read_sources(
    files: &[std::path::PathBuf],
    server: Option<&str>,
    token: Option<&str>,
    query: &annotation_server::api::ExportQuery,
    opts: &DataOptions,
) -> Result<Vec<Pair>> {
    let mut pairs = vec![];
    for p in files {
        pairs.extend(read_pairs(p, opts)?);
    }
    if let Some(url) = server {
        let token = token.context("--server needs a researcher token (--token or RLHF_TOKEN)")?;
        let got = fetch_pairs(url, token, query, opts)?;
        eprintln!("read {} pairs from {url}", got.len());
        pairs.extend(got);
    }
    Ok(pairs)
}

/// Reads preference data from the annotation server over HTTP (its
/// `GET /api/export`, researcher token): the raw per-labeler judgments
/// (rankings, strengths, labelers), filtered by `query` (batch, round, time),
/// then aggregated as `opts` says.
pub fn fetch_pairs(
    server: &str,
    token: &str,
    query: &annotation_server::api::ExportQuery,
    opts: &DataOptions,
) -> Result<Vec<Pair>> {
    let client = annotation_server::api::client::Client::new(server, token)?;
    let mut q = query.clone();
    q.format = Some(annotation_server::api::ExportFormat::Raw);
    let mut pairs = vec![];
    let mut n = 0usize;
    client
        .export_lines(&q, |line| {
            n += 1;
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("export line {n}: not valid JSON"))?;
            pairs.extend(
                parse_line(&v, n, &opts.margins).with_context(|| format!("export line {n}"))?,
            );
            Ok(())
        })
        .with_context(|| format!("cannot read the export of {server}"))?;
    Ok(match opts.aggregation {
        Aggregation::PerLabeler => pairs,
        Aggregation::Consensus => consensus(pairs),
    })
}

/// Majority vote per (prompt, response pair); equal votes are a tie and skipped.
pub fn consensus(pairs: Vec<Pair>) -> Vec<Pair> {
    // key: prompt + unordered responses; value: votes for (a over b) and against, with margins
    type Votes = (Vec<Pair>, Vec<Pair>);
    let mut groups: BTreeMap<(String, String, String), Votes> = BTreeMap::new();
    for p in pairs {
        let (c, r) = (p.chosen.key(), p.rejected.key());
        let forward = c <= r;
        let key = if forward {
            (p.prompt.key(), c, r)
        } else {
            (p.prompt.key(), r, c)
        };
        let e = groups.entry(key).or_default();
        if forward {
            e.0.push(p)
        } else {
            e.1.push(p)
        }
    }
    let mut out = vec![];
    for (_, (fwd, back)) in groups {
        let winners = match fwd.len().cmp(&back.len()) {
            std::cmp::Ordering::Greater => fwd,
            std::cmp::Ordering::Less => back,
            std::cmp::Ordering::Equal => continue,
        };
        let margin = winners.iter().map(|p| p.margin).sum::<f32>() / winners.len() as f32;
        let mut p = winners[0].clone();
        p.margin = margin;
        p.labeler = None;
        // the strength shown in reports: the most common among the majority
        let mut counts: BTreeMap<Strength, usize> = BTreeMap::new();
        for s in winners.iter().filter_map(|p| p.strength) {
            *counts.entry(s).or_default() += 1;
        }
        p.strength = counts
            .into_iter()
            .max_by_key(|&(s, n)| (n, s))
            .map(|(s, _)| s);
        out.push(p);
    }
    out
}

/// Turns prompts and responses into the token ids the reward model scores.
pub struct Encoder {
    pub tokenizer: Tokenizer,
}

impl Encoder {
    /// An encoder with the tokenizer of a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::load(dir)
            .with_context(|| format!("{} has no usable tokenizer", dir.display()))?;
        Ok(Encoder { tokenizer })
    }

    /// Token ids of `prompt` followed by `response` (see [`reward_tokens`]).
    pub fn encode(&self, prompt: &Content, response: &Content) -> Result<Vec<u32>> {
        reward_tokens(&self.tokenizer, prompt, response)
    }
}

/// Plain-text prompt and completion tokenized the way TRL 1.16 does (SFT,
/// DPO and reward trainers): prompt + completion as one text, with the
/// tokenizer's special tokens (e.g. BOS) and EOS appended unless it already
/// ends with one. Returns the joint tokens and where the completion starts:
/// where the prompt tokenized alone and the joint tokens diverge (TRL's
/// `common_prefix_length`), which is before the prompt's end when a token
/// spans the boundary, e.g. a prompt ending in a space.
pub fn encode_text_pair(
    tok: &Tokenizer,
    prompt: &str,
    completion: &str,
) -> Result<(Vec<u32>, usize)> {
    let prompt_ids = tok.encode(prompt, true)?;
    let mut ids = tok.encode(&format!("{prompt}{completion}"), true)?;
    if let Some(eos) = tok.eos_id() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
    }
    let split = common_prefix_len(&prompt_ids, &ids);
    Ok((ids, split))
}

/// Number of leading tokens two sequences share.
pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The tokens a reward model scores for `prompt` + `response`, in training
/// and when scoring samples (one rule, so the model is used on the
/// tokenization it learned): plain text through [`encode_text_pair`], chat
/// through the chat template as one conversation.
pub fn reward_tokens(tok: &Tokenizer, prompt: &Content, response: &Content) -> Result<Vec<u32>> {
    let chat = |p: &Content| match p {
        Content::Chat(m) => m.clone(),
        Content::Text(t) if t.is_empty() => vec![],
        Content::Text(t) => vec![Message::user(t.clone())],
    };
    let ids = match (prompt, response) {
        (Content::Text(p), Content::Text(r)) => encode_text_pair(tok, p, r)?.0,
        _ => {
            let mut messages = chat(prompt);
            match response {
                Content::Chat(m) => messages.extend(m.iter().cloned()),
                Content::Text(t) => messages.push(Message::assistant(t.clone())),
            }
            apply_chat_template(tok, &messages, false)?.1
        }
    };
    if ids.is_empty() {
        bail!("the input encodes to no tokens");
    }
    Ok(ids)
}

/// Whether a JSON line tags its prompt unsafe (for Llama-2's safety +
/// helpfulness reward): `"unsafe": true`, or a `tags` list holding
/// "unsafe" or "safety" in any case. The one rule for every command.
pub fn is_unsafe_prompt(v: &Value) -> bool {
    let tagged = v.get("tags").and_then(Value::as_array).is_some_and(|t| {
        t.iter().any(|x| {
            x.as_str().is_some_and(|s| {
                s.eq_ignore_ascii_case("safety") || s.eq_ignore_ascii_case("unsafe")
            })
        })
    });
    v.get("unsafe").and_then(Value::as_bool).unwrap_or(false) || tagged
}

/// A tokenized pair.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedPair {
    pub group: String,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: f32,
    pub strength: Option<Strength>,
}

/// Tokenizes pairs; pairs with a side longer than `max_len` tokens are
/// dropped (truncating would cut the end, where the reward is read).
/// Returns the kept pairs and the number dropped.
pub fn encode_pairs(
    enc: &Encoder,
    pairs: &[Pair],
    max_len: usize,
) -> Result<(Vec<EncodedPair>, usize)> {
    let mut out = vec![];
    let mut dropped = 0;
    for (i, p) in pairs.iter().enumerate() {
        let chosen = enc
            .encode(&p.prompt, &p.chosen)
            .with_context(|| format!("pair {i} ({}): chosen", p.group))?;
        let rejected = enc
            .encode(&p.prompt, &p.rejected)
            .with_context(|| format!("pair {i} ({}): rejected", p.group))?;
        if chosen.len() > max_len || rejected.len() > max_len {
            dropped += 1;
            continue;
        }
        out.push(EncodedPair {
            group: p.group.clone(),
            chosen,
            rejected,
            margin: p.margin,
            strength: p.strength,
        });
    }
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> DataOptions {
        DataOptions::default()
    }

    #[test]
    fn trl_pairwise_plain_and_conversational() {
        let text = [
            json!({"prompt": "Q?", "chosen": " yes", "rejected": " no", "margin": 1.5}).to_string(),
            String::new(),
            json!({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
                   "rejected": [{"role": "assistant", "content": "go away"}], "strength": "significantly_better"}).to_string(),
            json!({"chosen": "a", "rejected": "b", "tie": true}).to_string(),
        ]
        .join("\n");
        let p = parse_pairs(&text, "t", &opts()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].margin, 1.5);
        assert_eq!(p[0].prompt, Content::Text("Q?".into()));
        assert_eq!(p[1].margin, 3.0);
        assert!(matches!(&p[1].chosen, Content::Chat(m) if m[0].content == "hello"));
        let off = DataOptions {
            margins: MarginTable::off(),
            ..opts()
        };
        assert!(parse_pairs(&text, "t", &off)
            .unwrap()
            .iter()
            .all(|p| p.margin == 0.0));
    }

    #[test]
    fn rankings_expand_to_ordered_pairs_and_skip_ties() {
        // server export: ranks by display position, 1 = best; positions 1 and 2 tie
        let line = json!({"comparison_id": 7, "prompt": "p", "responses": [{"position": 0, "text": "A"}, {"position": 1, "text": "B"}, {"position": 2, "text": "C"}],
                          "ranking": [3, 1, 1], "strength": "better", "labeler": "ann"});
        let p = parse_line(&line, 1, &MarginTable::default()).unwrap();
        let got: Vec<(String, String)> = p
            .iter()
            .map(|p| match (&p.chosen, &p.rejected) {
                (Content::Text(a), Content::Text(b)) => (a.clone(), b.clone()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![("B".into(), "A".into()), ("C".into(), "A".into())]
        );
        assert!(p.iter().all(|p| p.margin == 2.0
            && p.group == "comparison:7"
            && p.labeler.as_deref() == Some("ann")));
        // best first without ranking: 3 responses → 3 pairs
        assert_eq!(
            parse_line(
                &json!({"prompt": "p", "responses": ["x", "y", "z"]}),
                1,
                &MarginTable::off()
            )
            .unwrap()
            .len(),
            3
        );
    }

    #[test]
    fn consensus_takes_the_majority_and_skips_ties() {
        let mk = |c: &str, r: &str, s: &str| {
            json!({"comparison_id": 1, "prompt": "p", "chosen": c, "rejected": r, "strength": s})
                .to_string()
        };
        let text = [
            mk("A", "B", "better"),
            mk("A", "B", "significantly_better"),
            mk("B", "A", "slightly_better"),
            mk("C", "D", "better"),
            mk("D", "C", "better"),
        ]
        .join("\n");
        let per = parse_pairs(&text, "t", &opts()).unwrap();
        assert_eq!(per.len(), 5);
        let c = parse_pairs(
            &text,
            "t",
            &DataOptions {
                aggregation: Aggregation::Consensus,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(c.len(), 1, "C/D is a tie");
        assert_eq!(c[0].chosen, Content::Text("A".into()));
        assert_eq!(c[0].margin, 2.5);
    }

    #[test]
    fn bad_lines_give_clear_errors() {
        let e = |t: &str| format!("{:#}", parse_pairs(t, "f.jsonl", &opts()).unwrap_err());
        assert!(e("{not json").contains("f.jsonl: line 1: not valid JSON"));
        assert!(e(r#"{"chosen": "a"}"#).contains("missing `rejected`"));
        assert!(e(r#"{"chosen": "a", "rejected": 3}"#).contains("`rejected` must be"));
        assert!(e(r#"{"chosen": "a", "rejected": "b", "strength": "huge"}"#)
            .contains("unknown preference strength"));
        assert!(
            e(r#"{"prompt": "p", "responses": ["a", "b"], "ranking": [1]}"#)
                .contains("1 ranks for 2 responses")
        );
        assert!(e(r#"{"prompt": "p"}"#).contains("needs `chosen` and `rejected`"));
        assert!(e("[1, 2]").contains("JSON object"));
    }
}
