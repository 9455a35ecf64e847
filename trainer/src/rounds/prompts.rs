//! A round's prompts: the server's prompt pool of a source, the window each
//! round takes, and the files the stages read.
use super::config::RoundConfig;
use super::tasks::Task;
use annotation_server::api::client::Client;
use annotation_server::api::ChatMessage;
use anyhow::{bail, Result};
use reward_model::data::{Content, Pair};
use serde_json::{json, Value};
use std::path::Path;

/// The round's prompts, as sampled (in its work directory).
pub const PROMPTS_FILE: &str = "prompts.jsonl";

/// The server's prompts with this `source`, by id.
pub fn source_prompts(
    client: &Client,
    source: &str,
) -> Result<Vec<annotation_server::api::Prompt>> {
    let mut pool = vec![];
    let mut after = 0;
    loop {
        let page = client.prompts(after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        pool.extend(
            page.into_iter()
                .filter(|p| p.source.as_deref() == Some(source)),
        );
    }
    Ok(pool)
}

/// The round's prompts: a window of the pool, moving by `prompts_per_round` each round.
pub fn pick_prompts(
    client: &Client,
    cfg: &RoundConfig,
) -> Result<Vec<annotation_server::api::Prompt>> {
    let pool = source_prompts(client, &cfg.prompt_source)?;
    if pool.is_empty() {
        bail!(
            "the server has no prompts with source `{}`",
            cfg.prompt_source
        );
    }
    let start = (cfg.index.saturating_sub(1) as usize * cfg.prompts_per_round) % pool.len();
    Ok((0..cfg.prompts_per_round.min(pool.len()))
        .map(|i| pool[(start + i) % pool.len()].clone())
        .collect())
}

/// A server prompt as the policy sees it: plain text for a text task's
/// single user message, else chat messages.
pub fn content_of(cfg: &RoundConfig, messages: &[ChatMessage]) -> Content {
    if cfg.prompt_format == "text" && messages.len() == 1 && messages[0].role == "user" {
        Content::Text(messages[0].content.clone())
    } else {
        Content::Chat(
            messages
                .iter()
                .map(|m| policy::chat::Message::new(m.role.clone(), m.content.clone()))
                .collect(),
        )
    }
}

/// Pairs with a text task's prompts as plain text (the export gives chat messages).
pub fn as_text_pairs(cfg: &RoundConfig, pairs: Vec<Pair>) -> Vec<Pair> {
    pairs
        .into_iter()
        .map(|mut p| {
            if let Content::Chat(m) = &p.prompt {
                if cfg.prompt_format == "text" && m.len() == 1 && m[0].role == "user" {
                    p.prompt = Content::Text(m[0].content.clone());
                }
            }
            p
        })
        .collect()
}

/// Imports `n` of the task's prompts under [`prompt_source`](super::tasks::prompt_source), unless the server
/// already has prompts with that source; returns the source.
pub fn ensure_prompts(client: &Client, task: &dyn Task, n: usize) -> Result<String> {
    use annotation_server::api::PromptImport;
    let source = super::tasks::prompt_source(task);
    if source_prompts(client, &source)?.is_empty() {
        let prompts: Vec<PromptImport> = task
            .prompts(n, super::tasks::PROMPT_SEED)
            .into_iter()
            .map(|p| PromptImport {
                prompt: Some(p),
                source: Some(source.clone()),
                ..PromptImport::default()
            })
            .collect();
        client.import_prompts(&prompts)?;
    }
    Ok(source)
}

fn content_json(c: &Content) -> Value {
    match c {
        Content::Text(t) => json!(t),
        Content::Chat(m) => serde_json::to_value(m).unwrap_or(Value::Null),
    }
}

/// Writes preference pairs as TRL JSONL.
pub fn write_pairs(path: &Path, pairs: &[Pair]) -> Result<()> {
    let text: String = pairs
        .iter()
        .map(|p| format!("{}\n", json!({"prompt": content_json(&p.prompt), "chosen": content_json(&p.chosen), "rejected": content_json(&p.rejected)})))
        .collect();
    policy::fs_atomic::write_file_synced(path, text.as_bytes())
}

/// Writes the round's prompts as the stages read them (JSONL).
pub fn write_prompts(
    cfg: &RoundConfig,
    path: &Path,
    prompts: &[annotation_server::api::Prompt],
) -> Result<()> {
    let text: String = prompts
        .iter()
        .map(|p| {
            format!(
                "{}\n",
                json!({"prompt": content_json(&content_of(cfg, &p.messages)), "tags": p.tags})
            )
        })
        .collect();
    policy::fs_atomic::write_file_synced(path, text.as_bytes())
}
