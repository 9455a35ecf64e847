//! Task assignment: leases, `labels_wanted` distinct labelers per comparison,
//! no repeats, skips and expiry, safe under concurrency on SQLite and PostgreSQL.
//!
//! Invariant, per comparison: `labels_done + leased <= labels_wanted`, where
//! `leased` counts the lease rows that exist for it (expired ones too, until
//! they are reaped). Every change of the counters is a single conditional
//! `UPDATE` (atomic on both databases) in the same transaction as the lease or
//! label row it accounts for, so a slot can never be handed out twice and a
//! comparison can never collect more labels than it wants.
use crate::api::{ChatMessage, LabelReceipt, SubmitLabel, Task, TaskResponse};
use crate::db::begin_write;
use crate::entities::{
    comparison_responses, comparisons, labels, leases, prompts, responses, skips,
};
use crate::error::{is_unique_violation, reject_nul, AppError, AppResult};
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};
use rand::Rng;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use std::sync::atomic::{AtomicI64, Ordering};

/// Comparison states.
pub const OPEN: &str = "open";
/// All wanted labels collected.
pub const COMPLETE: &str = "complete";

/// How many candidate comparisons one assignment attempt looks at. Concurrent
/// labelers start at random places in this window so they rarely collide.
const CANDIDATES: u64 = 256;

/// Longest accepted edited response / note (characters).
const MAX_EDIT_CHARS: usize = 100_000;
const MAX_NOTE_CHARS: usize = 10_000;

/// When expired leases were last reaped (ms), to reap at most once a second.
static LAST_REAP: AtomicI64 = AtomicI64::new(0);

/// Hands `labeler` a task: the one they already hold (lease renewed), or a new
/// lease on the oldest open comparison they have neither labeled nor skipped.
/// `None` when there is nothing for them.
pub async fn next_task(state: &AppState, labeler: i64) -> AppResult<Option<Task>> {
    let db = &state.db;
    let lease_ms = state.config.lease_duration.as_millis() as i64;
    for attempt in 0..8 {
        if let Some(task) = renew_held(db, labeler, lease_ms).await? {
            return Ok(Some(task));
        }
        let now = now_ms();
        if attempt > 0 || now - LAST_REAP.load(Ordering::Relaxed) > 1000 {
            reap_expired(state).await?;
        }
        let candidates = candidate_ids(db, labeler).await?;
        if candidates.is_empty() {
            if attempt == 0 {
                // expired leases may be hiding work: reap and look once more
                continue;
            }
            return Ok(None);
        }
        let start = rand::thread_rng().gen_range(0..candidates.len());
        for i in 0..candidates.len() {
            let id = candidates[(start + i) % candidates.len()];
            match try_claim(db, id, labeler, now + lease_ms).await? {
                Claim::Got => return load_task(db, id, now + lease_ms).await.map(Some),
                Claim::Full => continue,
                // a concurrent request of the same labeler got a lease: use it
                Claim::AlreadyHeld => break,
            }
        }
    }
    // persistent contention: tell the client to come back rather than spin
    Ok(None)
}

/// The labeler's current lease, renewed, as a task.
async fn renew_held(
    db: &DatabaseConnection,
    labeler: i64,
    lease_ms: i64,
) -> AppResult<Option<Task>> {
    let held = leases::Entity::find()
        .filter(leases::Column::LabelerId.eq(labeler))
        .order_by_asc(leases::Column::Id)
        .one(db)
        .await?;
    let Some(lease) = held else { return Ok(None) };
    let expires = now_ms() + lease_ms;
    let renewed = leases::Entity::update_many()
        .col_expr(leases::Column::ExpiresAt, Expr::value(expires))
        .filter(leases::Column::Id.eq(lease.id))
        .exec(db)
        .await?;
    if renewed.rows_affected == 0 {
        // reaped in between; the caller looks for new work
        return Ok(None);
    }
    load_task(db, lease.comparison_id, expires).await.map(Some)
}

/// Comparisons `labeler` has neither labeled nor skipped.
fn unseen_by(labeler: i64) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(
            comparisons::Column::Id.not_in_subquery(
                Query::select()
                    .column(labels::Column::ComparisonId)
                    .from(labels::Entity)
                    .and_where(labels::Column::LabelerId.eq(labeler))
                    .to_owned(),
            ),
        )
        .add(
            comparisons::Column::Id.not_in_subquery(
                Query::select()
                    .column(skips::Column::ComparisonId)
                    .from(skips::Entity)
                    .and_where(skips::Column::LabelerId.eq(labeler))
                    .to_owned(),
            ),
        )
}

/// Open comparisons with a free slot that `labeler` has not labeled or skipped, oldest first.
async fn candidate_ids(db: &DatabaseConnection, labeler: i64) -> AppResult<Vec<i64>> {
    let ids = comparisons::Entity::find()
        .select_only()
        .column(comparisons::Column::Id)
        .filter(comparisons::Column::State.eq(OPEN))
        .filter(
            Expr::col(comparisons::Column::LabelsDone)
                .add(Expr::col(comparisons::Column::Leased))
                .lt(Expr::col(comparisons::Column::LabelsWanted)),
        )
        .filter(unseen_by(labeler))
        .order_by_asc(comparisons::Column::Id)
        .limit(CANDIDATES)
        .into_tuple::<i64>()
        .all(db)
        .await?;
    Ok(ids)
}

enum Claim {
    Got,
    Full,
    AlreadyHeld,
}

/// Takes a slot of comparison `id` for `labeler` if one is free.
async fn try_claim(
    db: &DatabaseConnection,
    id: i64,
    labeler: i64,
    expires: i64,
) -> AppResult<Claim> {
    let (_writer, txn) = begin_write(db).await?;
    if !take_slot(&txn, id).await? {
        return Ok(Claim::Full);
    }
    let inserted = leases::ActiveModel {
        comparison_id: Set(id),
        labeler_id: Set(labeler),
        expires_at: Set(expires),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(&txn)
    .await;
    match inserted {
        Ok(_) => {
            txn.commit().await?;
            Ok(Claim::Got)
        }
        // dropping the transaction rolls the slot back
        Err(e) if is_unique_violation(&e) => Ok(Claim::AlreadyHeld),
        Err(e) => Err(e.into()),
    }
}

/// Atomically increments `leased` if the comparison is open and has a free slot.
async fn take_slot<C: ConnectionTrait>(db: &C, id: i64) -> AppResult<bool> {
    let r = comparisons::Entity::update_many()
        .col_expr(
            comparisons::Column::Leased,
            Expr::col(comparisons::Column::Leased).add(1),
        )
        .filter(comparisons::Column::Id.eq(id))
        .filter(comparisons::Column::State.eq(OPEN))
        .filter(
            Expr::col(comparisons::Column::LabelsDone)
                .add(Expr::col(comparisons::Column::Leased))
                .lt(Expr::col(comparisons::Column::LabelsWanted)),
        )
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

/// Gives back the slot of a lease row that was just deleted.
async fn release_slot<C: ConnectionTrait>(db: &C, id: i64) -> AppResult<()> {
    comparisons::Entity::update_many()
        .col_expr(
            comparisons::Column::Leased,
            Expr::col(comparisons::Column::Leased).sub(1),
        )
        .filter(comparisons::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes the lease of `labeler` on comparison `id`; true if there was one.
async fn drop_lease<C: ConnectionTrait>(db: &C, id: i64, labeler: i64) -> AppResult<bool> {
    let r = leases::Entity::delete_many()
        .filter(leases::Column::ComparisonId.eq(id))
        .filter(leases::Column::LabelerId.eq(labeler))
        .exec(db)
        .await?;
    Ok(r.rows_affected == 1)
}

/// Returns the slots of expired leases to the queue. Each lease is deleted by a
/// conditional `DELETE`, so concurrent reapers (or a racing submit) release it once.
pub async fn reap_expired(state: &AppState) -> AppResult<u64> {
    let db = &state.db;
    let now = now_ms();
    LAST_REAP.store(now, Ordering::Relaxed);
    let expired: Vec<(i64, i64)> = leases::Entity::find()
        .select_only()
        .column(leases::Column::Id)
        .column(leases::Column::ComparisonId)
        .filter(leases::Column::ExpiresAt.lt(now))
        .limit(500)
        .into_tuple()
        .all(db)
        .await?;
    let mut reaped = 0;
    for (lease_id, comparison_id) in expired {
        let (_writer, txn) = begin_write(db).await?;
        let r = leases::Entity::delete_many()
            .filter(leases::Column::Id.eq(lease_id))
            .filter(leases::Column::ExpiresAt.lt(now))
            .exec(&txn)
            .await?;
        if r.rows_affected == 1 {
            release_slot(&txn, comparison_id).await?;
            reaped += 1;
        }
        txn.commit().await?;
    }
    state
        .metrics
        .leases_expired
        .fetch_add(reaped, Ordering::Relaxed);
    Ok(reaped)
}

/// Number of responses of a comparison (404 if it does not exist).
async fn response_count(db: &DatabaseConnection, id: i64) -> AppResult<usize> {
    let n = comparison_responses::Entity::find()
        .filter(comparison_responses::Column::ComparisonId.eq(id))
        .count(db)
        .await?;
    if n == 0 {
        return Err(AppError::NotFound(format!("no comparison {id}")));
    }
    Ok(n as usize)
}

/// Checks a label against a comparison with `k` responses.
pub fn validate_label(body: &SubmitLabel, k: usize) -> AppResult<()> {
    if body.ranking.len() != k {
        return Err(AppError::Unprocessable(format!(
            "ranking must give a rank for each of the {k} responses (got {})",
            body.ranking.len()
        )));
    }
    if body.ranking.iter().any(|&r| r < 1 || r as usize > k) {
        return Err(AppError::Unprocessable(format!(
            "ranks must be between 1 and {k}"
        )));
    }
    if !body.ranking.contains(&1) {
        return Err(AppError::Unprocessable(
            "some response must have rank 1 (the best)".into(),
        ));
    }
    if body
        .edited_response
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_EDIT_CHARS)
    {
        return Err(AppError::Unprocessable(format!(
            "edited_response is over {MAX_EDIT_CHARS} characters"
        )));
    }
    if body
        .note
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_NOTE_CHARS)
    {
        return Err(AppError::Unprocessable(format!(
            "note is over {MAX_NOTE_CHARS} characters"
        )));
    }
    reject_nul(
        body.edited_response.as_deref().unwrap_or(""),
        "edited_response",
    )?;
    reject_nul(body.note.as_deref().unwrap_or(""), "note")?;
    if body.time_spent_ms.is_some_and(|t| t > i64::MAX as u64) {
        return Err(AppError::Unprocessable(
            "time_spent_ms is out of range".into(),
        ));
    }
    Ok(())
}

/// Stores `labeler`'s label of comparison `id`. The labeler should hold a lease;
/// if theirs expired and was reaped, the label is still taken when a slot is free.
pub async fn submit_label(
    state: &AppState,
    labeler: i64,
    id: i64,
    body: SubmitLabel,
) -> AppResult<LabelReceipt> {
    let db = &state.db;
    let k = response_count(db, id).await?;
    validate_label(&body, k)?;
    let ranking =
        serde_json::to_string(&body.ranking).map_err(|e| AppError::Internal(e.to_string()))?;

    let (_writer, txn) = begin_write(db).await?;
    if !drop_lease(&txn, id, labeler).await? && !take_slot(&txn, id).await? {
        drop(txn);
        return Err(why_no_slot(db, id, labeler).await);
    }
    let inserted = labels::ActiveModel {
        comparison_id: Set(id),
        labeler_id: Set(labeler),
        ranking: Set(ranking),
        strength: Set(body.strength.as_str().to_string()),
        safety: Set(body.safety.map(|s| s.as_str().to_string())),
        edited_response: Set(body.edited_response.filter(|s| !s.trim().is_empty())),
        note: Set(body.note.filter(|s| !s.trim().is_empty())),
        time_spent_ms: Set(body.time_spent_ms.map(|t| t as i64)),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(&txn)
    .await;
    let label = match inserted {
        Ok(l) => l,
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::Conflict(format!(
                "you already labeled comparison {id}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    // the slot turns from "leased" into "done", in one statement so that the
    // write lock is held briefly; SET expressions see the old row
    let done = Expr::col(comparisons::Column::LabelsDone).add(1);
    let updated = comparisons::Entity::update_many()
        .col_expr(comparisons::Column::LabelsDone, done.clone())
        .col_expr(
            comparisons::Column::Leased,
            Expr::col(comparisons::Column::Leased).sub(1),
        )
        .col_expr(
            comparisons::Column::State,
            Expr::case(
                done.gte(Expr::col(comparisons::Column::LabelsWanted)),
                COMPLETE,
            )
            .finally(Expr::col(comparisons::Column::State))
            .into(),
        )
        .filter(comparisons::Column::Id.eq(id))
        .exec_with_returning(&txn)
        .await?;
    let complete = updated.first().is_some_and(|c| c.state == COMPLETE);
    txn.commit().await?;
    state
        .metrics
        .labels_submitted
        .fetch_add(1, Ordering::Relaxed);
    Ok(LabelReceipt {
        label_id: label.id,
        comparison_id: id,
        comparison_complete: complete,
    })
}

/// Explains why a label without a lease cannot be taken.
async fn why_no_slot(db: &DatabaseConnection, id: i64, labeler: i64) -> AppError {
    let already = labels::Entity::find()
        .filter(labels::Column::ComparisonId.eq(id))
        .filter(labels::Column::LabelerId.eq(labeler))
        .one(db)
        .await;
    match already {
        Ok(Some(_)) => AppError::Conflict(format!("you already labeled comparison {id}")),
        Ok(None) => AppError::Conflict(format!(
            "comparison {id} has all the labels it wants (your lease expired or you held none); get the next task"
        )),
        Err(e) => e.into(),
    }
}

/// `labeler` skips comparison `id`: their lease (if any) is released and the
/// comparison is never offered to them again.
pub async fn skip(state: &AppState, labeler: i64, id: i64) -> AppResult<()> {
    let db = &state.db;
    response_count(db, id).await?;
    let (_writer, txn) = begin_write(db).await?;
    if drop_lease(&txn, id, labeler).await? {
        release_slot(&txn, id).await?;
    }
    skips::Entity::insert(skips::ActiveModel {
        comparison_id: Set(id),
        labeler_id: Set(labeler),
        created_at: Set(now_ms()),
        ..Default::default()
    })
    .on_conflict_do_nothing_on([skips::Column::ComparisonId, skips::Column::LabelerId])
    .exec(&txn)
    .await?;
    txn.commit().await?;
    state.metrics.skips.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Loads a comparison as a task.
pub async fn load_task(db: &DatabaseConnection, id: i64, lease_expires: i64) -> AppResult<Task> {
    let c = comparisons::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no comparison {id}")))?;
    let p = prompts::Entity::find_by_id(c.prompt_id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::Internal(format!("comparison {id} lost its prompt")))?;
    let texts = response_texts(db, id).await?;
    Ok(Task {
        comparison_id: c.id,
        batch_id: c.batch_id,
        prompt: parse_messages(&p.messages),
        tags: parse_tags(&p.tags),
        responses: texts
            .into_iter()
            .enumerate()
            .map(|(position, r)| TaskResponse {
                position,
                text: r.text,
            })
            .collect(),
        lease_expires_at: rfc3339(lease_expires),
    })
}

/// The responses of a comparison, by position.
pub async fn response_texts(db: &DatabaseConnection, id: i64) -> AppResult<Vec<responses::Model>> {
    let links = comparison_responses::Entity::find()
        .filter(comparison_responses::Column::ComparisonId.eq(id))
        .order_by_asc(comparison_responses::Column::Position)
        .all(db)
        .await?;
    let ids: Vec<i64> = links.iter().map(|l| l.response_id).collect();
    let rows = responses::Entity::find()
        .filter(responses::Column::Id.is_in(ids.clone()))
        .all(db)
        .await?;
    let mut by_id: std::collections::HashMap<i64, responses::Model> =
        rows.into_iter().map(|r| (r.id, r)).collect();
    Ok(ids.iter().filter_map(|i| by_id.remove(i)).collect())
}

/// Parses stored chat messages (empty on corruption rather than failing a page).
pub fn parse_messages(s: &str) -> Vec<ChatMessage> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Parses stored tags.
pub fn parse_tags(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Labels `labeler` submitted since `since_ms`.
pub async fn labels_since(db: &DatabaseConnection, labeler: i64, since_ms: i64) -> AppResult<u64> {
    Ok(labels::Entity::find()
        .filter(labels::Column::LabelerId.eq(labeler))
        .filter(labels::Column::CreatedAt.gte(since_ms))
        .count(db)
        .await?)
}

/// Open comparisons with a free slot that `labeler` could still get.
pub async fn remaining_for(db: &DatabaseConnection, labeler: i64) -> AppResult<u64> {
    let q = comparisons::Entity::find()
        .filter(comparisons::Column::State.eq(OPEN))
        .filter(unseen_by(labeler));
    Ok(q.count(db).await?)
}
