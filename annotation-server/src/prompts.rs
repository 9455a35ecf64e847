//! Importing and listing prompts.
use crate::api::{ChatMessage, ImportResult, Prompt, PromptImport};
use crate::assign::{parse_messages, parse_tags};
use crate::audit;
use crate::db::begin_write;
use crate::entities::prompts;
use crate::error::{is_unique_violation, AppError, AppResult};
use crate::time::{now_ms, rfc3339};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

/// Longest prompt text or message (characters).
pub const MAX_TEXT_CHARS: usize = 1_000_000;
/// Most prompts in one import.
pub const MAX_IMPORT_LINES: usize = 100_000;

/// Checks chat messages: non-empty, known roles, ends with a user turn.
pub fn validate_messages(msgs: &[ChatMessage], what: &str) -> Result<(), String> {
    if msgs.is_empty() {
        return Err(format!("{what}: messages must not be empty"));
    }
    for (i, m) in msgs.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "{what}: message {i} has role {:?}; use system, user or assistant",
                m.role
            ));
        }
        if m.content.chars().count() > MAX_TEXT_CHARS {
            return Err(format!(
                "{what}: message {i} is over {MAX_TEXT_CHARS} characters"
            ));
        }
    }
    if msgs.last().map(|m| m.role.as_str()) != Some("user") {
        return Err(format!("{what}: the last message must be from the user"));
    }
    Ok(())
}

/// Validates one import line and returns its messages.
fn check_line(p: &PromptImport, what: &str) -> Result<Vec<ChatMessage>, String> {
    let texts = p.id.iter().chain(&p.source).chain(&p.prompt).chain(&p.tags);
    let msgs_text = p
        .messages
        .iter()
        .flatten()
        .flat_map(|m| [&m.role, &m.content]);
    if texts.chain(msgs_text).any(|t| t.contains('\0')) {
        return Err(format!("{what}: text contains a NUL character"));
    }
    let msgs = match (&p.prompt, &p.messages) {
        (Some(text), None) => {
            if text.trim().is_empty() {
                return Err(format!("{what}: prompt is empty"));
            }
            vec![ChatMessage {
                role: "user".into(),
                content: text.clone(),
            }]
        }
        (None, Some(m)) => m.clone(),
        _ => {
            return Err(format!(
                "{what}: give exactly one of \"prompt\" or \"messages\""
            ))
        }
    };
    validate_messages(&msgs, what)?;
    if p.tags.len() > 32
        || p.tags
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > 64)
    {
        return Err(format!("{what}: at most 32 tags of 1-64 characters"));
    }
    if p.id
        .as_ref()
        .is_some_and(|i| i.is_empty() || i.chars().count() > 200)
    {
        return Err(format!("{what}: id must have 1-200 characters"));
    }
    if p.source.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(format!("{what}: source must have at most 200 characters"));
    }
    Ok(msgs)
}

/// Imports prompts from JSONL (one [`PromptImport`] per line; blank lines
/// ignored). All or nothing: any bad line rejects the whole import, naming it.
pub async fn import_jsonl(
    db: &DatabaseConnection,
    body: &[u8],
    actor: i64,
) -> AppResult<ImportResult> {
    let text =
        std::str::from_utf8(body).map_err(|_| AppError::BadRequest("body is not UTF-8".into()))?;
    let mut parsed = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let what = format!("line {}", i + 1);
        let p: PromptImport =
            serde_json::from_str(line).map_err(|e| AppError::BadRequest(format!("{what}: {e}")))?;
        let msgs = check_line(&p, &what).map_err(AppError::Unprocessable)?;
        parsed.push((what, p, msgs));
        if parsed.len() > MAX_IMPORT_LINES {
            return Err(AppError::Unprocessable(format!(
                "at most {MAX_IMPORT_LINES} prompts per import"
            )));
        }
    }
    if parsed.is_empty() {
        return Err(AppError::BadRequest(
            "no prompts in the body (expected JSONL)".into(),
        ));
    }
    let (_writer, txn) = begin_write(db).await?;
    let now = now_ms();
    let mut ids = Vec::with_capacity(parsed.len());
    for (what, p, msgs) in &parsed {
        let row = prompts::ActiveModel {
            external_id: Set(p.id.clone()),
            messages: Set(
                serde_json::to_string(msgs).map_err(|e| AppError::Internal(e.to_string()))?
            ),
            tags: Set(
                serde_json::to_string(&p.tags).map_err(|e| AppError::Internal(e.to_string()))?
            ),
            source: Set(p.source.clone()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                AppError::Conflict(format!(
                    "{what}: a prompt with id {:?} already exists",
                    p.id.as_deref().unwrap_or("")
                ))
            } else {
                e.into()
            }
        })?;
        ids.push(row.id);
    }
    audit::record(
        &txn,
        Some(actor),
        "prompts.import",
        serde_json::json!({"count": ids.len()}),
    )
    .await?;
    txn.commit().await?;
    Ok(ImportResult {
        imported: ids.len(),
        prompt_ids: ids,
    })
}

/// The API view of a prompt row.
pub fn prompt_view(p: &prompts::Model) -> Prompt {
    Prompt {
        id: p.id,
        external_id: p.external_id.clone(),
        messages: parse_messages(&p.messages),
        tags: parse_tags(&p.tags),
        source: p.source.clone(),
        created_at: rfc3339(p.created_at),
    }
}

/// Prompts with id > `after`, by id, at most `limit`.
pub async fn list(db: &DatabaseConnection, after: i64, limit: u64) -> AppResult<Vec<Prompt>> {
    let rows = prompts::Entity::find()
        .filter(prompts::Column::Id.gt(after))
        .order_by_asc(prompts::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows.iter().map(prompt_view).collect())
}
