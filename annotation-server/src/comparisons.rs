//! Creating comparisons in bulk and reading them back with labels and consensus.
use crate::api::{
    ComparisonDetail, CreateComparisons, CreatedComparisons, LabelView, ResponseView, Safety,
    Strength,
};
use crate::assign::{parse_messages, response_texts, OPEN};
use crate::audit;
use crate::consensus::consensus;
use crate::db::begin_write;
use crate::entities::{
    batches, comparison_responses, comparisons, labels, prompts, responses, rounds, users,
};
use crate::error::{is_unique_violation, reject_nul, AppError, AppResult};
use crate::prompts::MAX_TEXT_CHARS;
use crate::time::{now_ms, rfc3339};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set,
};
use std::collections::HashMap;

/// Most responses in one comparison.
pub const MAX_RESPONSES: usize = 16;
/// Most comparisons per request.
pub const MAX_COMPARISONS: usize = 10_000;
/// Most labelers per comparison.
pub const MAX_LABELS_WANTED: u32 = 100;

fn check(req: &CreateComparisons) -> AppResult<()> {
    reject_nul(&req.batch, "batch")?;
    let bad = |m: String| Err(AppError::Unprocessable(m));
    if req.batch.trim().is_empty() || req.batch.chars().count() > 200 {
        return bad("batch must have 1-200 characters".into());
    }
    if req
        .labels_wanted
        .is_some_and(|n| n == 0 || n > MAX_LABELS_WANTED)
    {
        return bad(format!(
            "labels_wanted must be between 1 and {MAX_LABELS_WANTED}"
        ));
    }
    if req.comparisons.is_empty() || req.comparisons.len() > MAX_COMPARISONS {
        return bad(format!("give 1-{MAX_COMPARISONS} comparisons"));
    }
    for (i, c) in req.comparisons.iter().enumerate() {
        if c.prompt_id.is_some() == c.prompt_external_id.is_some() {
            return bad(format!(
                "comparisons[{i}]: give exactly one of prompt_id or prompt_external_id"
            ));
        }
        if c.responses.len() < 2 || c.responses.len() > MAX_RESPONSES {
            return bad(format!(
                "comparisons[{i}]: a comparison needs 2-{MAX_RESPONSES} responses"
            ));
        }
        for (j, r) in c.responses.iter().enumerate() {
            reject_nul(&r.text, &format!("comparisons[{i}].responses[{j}].text"))?;
            // an empty or duplicate response makes a pair with nothing to
            // prefer, which would be exported as chosen == rejected
            if r.text.trim().is_empty() {
                return bad(format!("comparisons[{i}].responses[{j}]: text is empty"));
            }
            if let Some(first) = c.responses[..j]
                .iter()
                .position(|o| o.text.trim() == r.text.trim())
            {
                return bad(format!(
                    "comparisons[{i}].responses[{j}]: same text as responses[{first}]; \
                     a comparison needs distinct responses"
                ));
            }
            reject_nul(
                r.model.as_deref().unwrap_or(""),
                &format!("comparisons[{i}].responses[{j}].model"),
            )?;
            if r.text.chars().count() > MAX_TEXT_CHARS {
                return bad(format!(
                    "comparisons[{i}].responses[{j}]: text is over {MAX_TEXT_CHARS} characters"
                ));
            }
            if r.model.as_ref().is_some_and(|m| m.chars().count() > 500) {
                return bad(format!(
                    "comparisons[{i}].responses[{j}]: model is over 500 characters"
                ));
            }
        }
    }
    Ok(())
}

async fn check_round<C: ConnectionTrait>(
    db: &C,
    round_id: Option<i64>,
    what: &str,
) -> AppResult<()> {
    if let Some(r) = round_id {
        if rounds::Entity::find_by_id(r).one(db).await?.is_none() {
            return Err(AppError::Unprocessable(format!("{what}: no round {r}")));
        }
    }
    Ok(())
}

/// Creates the comparisons (and their responses) in a batch, all or nothing.
pub async fn create(
    db: &DatabaseConnection,
    req: CreateComparisons,
    actor: i64,
) -> AppResult<CreatedComparisons> {
    check(&req)?;
    let (_writer, txn) = begin_write(db).await?;
    let now = now_ms();
    let batch = match batches::Entity::find()
        .filter(batches::Column::Name.eq(req.batch.clone()))
        .one(&txn)
        .await?
    {
        Some(b) => {
            if req
                .labels_wanted
                .is_some_and(|n| n as i32 != b.labels_wanted)
            {
                return Err(AppError::Conflict(format!(
                    "batch {:?} exists with labels_wanted = {}",
                    b.name, b.labels_wanted
                )));
            }
            b
        }
        None => {
            check_round(&txn, req.round_id, "round_id").await?;
            batches::ActiveModel {
                name: Set(req.batch.clone()),
                labels_wanted: Set(req.labels_wanted.unwrap_or(1) as i32),
                round_id: Set(req.round_id),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    AppError::Conflict(format!(
                        "batch {:?} was created concurrently; retry",
                        req.batch
                    ))
                } else {
                    e.into()
                }
            })?
        }
    };
    let mut prompt_cache: HashMap<String, i64> = HashMap::new();
    let mut ids = Vec::with_capacity(req.comparisons.len());
    for (i, c) in req.comparisons.into_iter().enumerate() {
        let what = format!("comparisons[{i}]");
        let prompt_id = match (c.prompt_id, c.prompt_external_id) {
            (Some(id), _) => {
                if prompts::Entity::find_by_id(id).one(&txn).await?.is_none() {
                    return Err(AppError::Unprocessable(format!("{what}: no prompt {id}")));
                }
                id
            }
            (None, Some(ext)) => match prompt_cache.get(&ext) {
                Some(id) => *id,
                None => {
                    let p = prompts::Entity::find()
                        .filter(prompts::Column::ExternalId.eq(ext.clone()))
                        .one(&txn)
                        .await?
                        .ok_or_else(|| {
                            AppError::Unprocessable(format!("{what}: no prompt with id {ext:?}"))
                        })?;
                    prompt_cache.insert(ext, p.id);
                    p.id
                }
            },
            (None, None) => unreachable!("checked above"),
        };
        let comparison = comparisons::ActiveModel {
            batch_id: Set(batch.id),
            prompt_id: Set(prompt_id),
            labels_wanted: Set(batch.labels_wanted),
            labels_done: Set(0),
            leased: Set(0),
            state: Set(OPEN.to_string()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        for (position, r) in c.responses.into_iter().enumerate() {
            check_round(
                &txn,
                r.round_id,
                &format!("{what}.responses[{position}].round_id"),
            )
            .await?;
            let resp = responses::ActiveModel {
                prompt_id: Set(prompt_id),
                text: Set(r.text),
                model: Set(r.model),
                round_id: Set(r.round_id),
                sampling: Set(r.sampling.map(|s| s.to_string())),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
            comparison_responses::ActiveModel {
                comparison_id: Set(comparison.id),
                position: Set(position as i32),
                response_id: Set(resp.id),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
        }
        ids.push(comparison.id);
    }
    audit::record(
        &txn,
        Some(actor),
        "comparisons.create",
        serde_json::json!({"batch_id": batch.id, "count": ids.len()}),
    )
    .await?;
    txn.commit().await?;
    if ids.len() >= BULK_IMPORT {
        refresh_planner_stats(db).await;
    }
    Ok(CreatedComparisons {
        batch_id: batch.id,
        comparison_ids: ids,
    })
}

/// An import at least this large refreshes PostgreSQL's planner statistics.
const BULK_IMPORT: usize = 500;

/// Re-analyzes the tables a bulk import grew (PostgreSQL). Autovacuum would
/// do it only a minute or more later; until then the planner believes the
/// tables are tiny and picks sequential scans and hash joins for the
/// per-task point queries, which then cost milliseconds each.
async fn refresh_planner_stats(db: &DatabaseConnection) {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return;
    }
    let analyzed = db
        .execute_unprepared("ANALYZE comparisons, comparison_responses, responses")
        .await;
    if let Err(e) = analyzed {
        // the import is committed; stale statistics only cost speed
        tracing::warn!(error = %e, "ANALYZE after a bulk import failed");
    }
}

/// The API view of a response at a position.
pub fn response_view(position: usize, r: &responses::Model) -> ResponseView {
    ResponseView {
        id: r.id,
        position,
        text: r.text.clone(),
        model: r.model.clone(),
        round_id: r.round_id,
        sampling: r
            .sampling
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
    }
}

/// The API view of a label.
pub fn label_view(l: &labels::Model, username: &str) -> LabelView {
    LabelView {
        id: l.id,
        labeler_id: l.labeler_id,
        username: username.to_string(),
        ranking: serde_json::from_str(&l.ranking).unwrap_or_default(),
        strength: Strength::parse(&l.strength).unwrap_or(Strength::NegligiblyBetter),
        safety: l.safety.as_deref().and_then(Safety::parse),
        edited_response: l.edited_response.clone(),
        note: l.note.clone(),
        time_spent_ms: l.time_spent_ms,
        created_at: rfc3339(l.created_at),
    }
}

/// Consensus of a set of labels.
pub fn consensus_of(labels: &[LabelView]) -> Option<crate::api::Consensus> {
    let rankings: Vec<Vec<u32>> = labels.iter().map(|l| l.ranking.clone()).collect();
    let margins: Vec<f64> = labels.iter().map(|l| l.strength.margin()).collect();
    consensus(&rankings, &margins)
}

/// A comparison with responses, labels and consensus.
pub async fn detail(db: &DatabaseConnection, id: i64) -> AppResult<ComparisonDetail> {
    let c = comparisons::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no comparison {id}")))?;
    let p = prompts::Entity::find_by_id(c.prompt_id).one(db).await?;
    let resps = response_texts(db, id).await?;
    let rows = labels::Entity::find()
        .filter(labels::Column::ComparisonId.eq(id))
        .order_by_asc(labels::Column::Id)
        .all(db)
        .await?;
    let names = usernames(db, rows.iter().map(|l| l.labeler_id)).await?;
    let views: Vec<LabelView> = rows
        .iter()
        .map(|l| {
            label_view(
                l,
                names.get(&l.labeler_id).map(String::as_str).unwrap_or(""),
            )
        })
        .collect();
    Ok(ComparisonDetail {
        id: c.id,
        batch_id: c.batch_id,
        state: c.state,
        labels_wanted: c.labels_wanted,
        labels_done: c.labels_done,
        prompt_id: c.prompt_id,
        prompt: p.map(|p| parse_messages(&p.messages)).unwrap_or_default(),
        responses: resps
            .iter()
            .enumerate()
            .map(|(i, r)| response_view(i, r))
            .collect(),
        consensus: consensus_of(&views),
        labels: views,
    })
}

/// User names by id.
pub async fn usernames(
    db: &DatabaseConnection,
    ids: impl Iterator<Item = i64>,
) -> AppResult<HashMap<i64, String>> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = users::Entity::find()
        .filter(users::Column::Id.is_in(ids))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|u| (u.id, u.username)).collect())
}
