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
use crate::entities::{comparison_responses, comparisons, labels, leases, responses, skips};
use crate::error::{is_unique_violation, reject_nul, AppError, AppResult};
use crate::sql::stmt;
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Value,
};
use std::sync::atomic::{AtomicI64, Ordering};

/// A comparison that still wants labels.
pub const OPEN: &str = "open";
/// All wanted labels collected.
pub const COMPLETE: &str = "complete";

/// Longest accepted edited response / note (characters).
const MAX_EDIT_CHARS: usize = 100_000;
const MAX_NOTE_CHARS: usize = 10_000;

/// When expired leases were last reaped (ms), to reap at most once a second.
static LAST_REAP: AtomicI64 = AtomicI64::new(0);

/// How many times one request tries to claim before answering "nothing now".
const CLAIM_ATTEMPTS: usize = 8;

/// Hands `labeler` a task: the one they already hold (lease renewed), or a new
/// lease on the oldest open comparison they have neither labeled nor skipped.
/// `None` when there is nothing for them.
pub async fn next_task(state: &AppState, labeler: i64) -> AppResult<Option<Task>> {
    let lease_ms = state.config.lease_duration.as_millis() as i64;
    for attempt in 0..CLAIM_ATTEMPTS {
        let now = now_ms();
        if attempt > 0 || now - LAST_REAP.load(Ordering::Relaxed) > 1000 {
            reap_expired(state).await?;
        }
        // the claim refuses labelers who hold a lease, so the common case
        // (holding none) needs no separate lookup first
        match claim_next(state, labeler, now + lease_ms).await? {
            Claim::Got(task) => {
                state.metrics.leases_granted.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(task));
            }
            Claim::Nothing => {
                if let Some(task) = renew_held(state, labeler, lease_ms).await? {
                    return Ok(Some(task));
                }
                if attempt > 0 {
                    return Ok(None);
                }
                // expired leases may be hiding work: reap and look once more
            }
            // a concurrent request of the same labeler got a lease: use it
            Claim::AlreadyHeld => {}
        }
    }
    // persistent contention: tell the client to come back rather than spin
    Ok(None)
}

/// The labeler's current lease, renewed, as a task. The lookup is a plain read
/// (most calls find nothing); only a held lease costs a write.
async fn renew_held(state: &AppState, labeler: i64, lease_ms: i64) -> AppResult<Option<Task>> {
    let db = &state.db;
    let held = leases::Entity::find()
        .select_only()
        .column(leases::Column::Id)
        .column(leases::Column::ComparisonId)
        .filter(leases::Column::LabelerId.eq(labeler))
        .order_by_asc(leases::Column::Id)
        .into_tuple::<(i64, i64)>()
        .one(db)
        .await?;
    let Some((lease_id, comparison_id)) = held else {
        return Ok(None);
    };
    let expires = now_ms() + lease_ms;
    let (_writer, txn) = begin_write(db).await?;
    let renewed = leases::Entity::update_many()
        .col_expr(leases::Column::ExpiresAt, Expr::value(expires))
        .filter(leases::Column::Id.eq(lease_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    if renewed.rows_affected == 0 {
        // reaped in between; the caller looks for new work
        return Ok(None);
    }
    load_task(state, comparison_id, expires).await.map(Some)
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

enum Claim {
    /// A lease on this comparison, loaded as a task.
    Got(Task),
    /// The labeler holds a lease already, or no open comparison has a free
    /// slot for them.
    Nothing,
    /// The labeler got a lease on it in a concurrent request.
    AlreadyHeld,
}

/// Unless `labeler` holds a lease already, takes a slot of the oldest open
/// comparison they have neither labeled nor skipped, records the lease and
/// loads the task, as one write: the pick cannot go stale before it is taken,
/// and the task comes back without another trip to the database.
async fn claim_next(state: &AppState, labeler: i64, expires: i64) -> AppResult<Claim> {
    let postgres = state.db.get_database_backend() == DbBackend::Postgres;
    // PostgreSQL: concurrent claimers skip rows another transaction has locked
    // instead of queueing on the same oldest row; only when that finds nothing
    // does a second, waiting pass make sure "nothing" is not just "everything
    // was busy this instant". SQLite: writers are serialized, one pass.
    let passes: &[&str] = if postgres {
        &[" FOR UPDATE SKIP LOCKED", " FOR UPDATE"]
    } else {
        &[""]
    };
    for lock in passes {
        let lease: [Value; 3] = [labeler.into(), expires.into(), now_ms().into()];
        let pick: [Value; 3] = [labeler.into(), labeler.into(), labeler.into()];
        // placeholders in text order: PostgreSQL picks first, SQLite inserts first
        let (sql, values): (String, Vec<Value>) = if postgres {
            (
                claim_sql_postgres(lock),
                pick.into_iter().chain(lease).collect(),
            )
        } else {
            (claim_sql_sqlite(), lease.into_iter().chain(pick).collect())
        };
        match state.writer.write(&sql, values).await {
            Ok(rows) => {
                if let Some(task) = task_from_rows(state, &rows, expires)? {
                    return Ok(Claim::Got(task));
                }
            }
            Err(e) if is_unique_violation(&e) => return Ok(Claim::AlreadyHeld),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Claim::Nothing)
}

/// `SELECT` of the oldest open comparison with a free slot that the labeler
/// (`?` three times) has neither labeled nor skipped, or none while they hold a
/// lease; `lock` is appended. The labeler's labels and skips are `NOT IN`
/// lists: read once through the `labeler_id` indexes, whatever the planner's
/// statistics (an anti-join may instead walk every label in comparison order).
fn oldest_eligible_sql(lock: &str) -> String {
    format!(
        "SELECT c.id FROM comparisons c \
         WHERE NOT EXISTS (SELECT 1 FROM leases h WHERE h.labeler_id = ?) \
           AND c.state = 'open' AND c.labels_done + c.leased < c.labels_wanted \
           AND c.id NOT IN (SELECT l.comparison_id FROM labels l WHERE l.labeler_id = ?) \
           AND c.id NOT IN (SELECT k.comparison_id FROM skips k WHERE k.labeler_id = ?) \
         ORDER BY c.id LIMIT 1{lock}"
    )
}

/// `SELECT` of a comparison as task rows (one per response, by position):
/// comparison id, batch id, prompt messages, prompt tags, response text. The
/// response text is a correlated subquery so that it is always a primary-key
/// lookup, whatever the planner's statistics say. `{from}` joins the source of
/// the comparison id `k.id`, `{cond}` restricts it.
fn task_sql(from: &str, cond: &str) -> String {
    format!(
        "SELECT c.id, c.batch_id, p.messages, p.tags, \
           (SELECT r.text FROM responses r WHERE r.id = cr.response_id) \
         FROM {from} JOIN comparisons c ON c.id = k.id \
         JOIN prompts p ON p.id = c.prompt_id \
         LEFT JOIN comparison_responses cr ON cr.comparison_id = c.id \
         WHERE {cond} ORDER BY cr.position"
    )
}

/// SQLite: the lease row is inserted, then its slot counted, then the task
/// read, guarded by `changes()` (rows the previous write statement touched) so
/// that nothing is counted or read when nothing was inserted. Runs inside the
/// writer's transaction, so no other writer can take the slot in between.
fn claim_sql_sqlite() -> String {
    format!(
        "INSERT INTO leases (comparison_id, labeler_id, expires_at, created_at) \
           SELECT id, ?, ?, ? FROM comparisons WHERE id = ({}); \
         UPDATE comparisons SET leased = leased + 1 \
           WHERE changes() = 1 AND id = (SELECT comparison_id FROM leases WHERE id = last_insert_rowid()); \
         {}",
        oldest_eligible_sql(""),
        task_sql(
            "(SELECT comparison_id AS id FROM leases WHERE id = last_insert_rowid()) k",
            "changes() = 1"
        )
    )
}

/// PostgreSQL: one statement; the slot, the lease row and the read commit
/// together. The task is read through the inserted lease, so it comes back
/// only if the lease was taken.
///
/// A claim does not wait for its commit to reach the disk
/// (`synchronous_commit` off for this transaction only, set where the lease
/// row is inserted): a lease lost in a database crash is harmless, since the
/// slot and the lease commit or vanish together and the labeler just gets a
/// task again. Labels still wait (and their commit flushes every earlier claim).
/// Half the commits of the labeling loop thus stop waiting for the disk.
fn claim_sql_postgres(lock: &str) -> String {
    format!(
        "WITH slot AS ( \
           UPDATE comparisons SET leased = leased + 1 \
           WHERE state = 'open' AND labels_done + leased < labels_wanted AND id = ({}) \
           RETURNING id), \
         ins AS (INSERT INTO leases (comparison_id, labeler_id, expires_at, created_at) \
           SELECT id, ?, ?, ? FROM slot \
           RETURNING comparison_id AS id, set_config('synchronous_commit', 'off', true)) \
         {}",
        oldest_eligible_sql(lock),
        task_sql("ins k", "TRUE")
    )
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
async fn drop_lease<C: ConnectionTrait>(
    db: &C,
    id: i64,
    labeler: i64,
) -> Result<bool, sea_orm::DbErr> {
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
pub async fn response_count(state: &AppState, id: i64) -> AppResult<usize> {
    if let Some(n) = state.response_counts.get(id) {
        return Ok(n);
    }
    let n = comparison_responses::Entity::find()
        .filter(comparison_responses::Column::ComparisonId.eq(id))
        .count(&state.db)
        .await?;
    if n == 0 {
        return Err(AppError::NotFound(format!("no comparison {id}")));
    }
    state.response_counts.put(id, n as usize);
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

/// Stores `labeler`'s label of comparison `id`. The labeler must hold a lease
/// on it (an expired one counts until it is reaped): a comparison is labeled
/// only by whom it was handed to, never by id alone, and never after a skip.
pub async fn submit_label(
    state: &AppState,
    labeler: i64,
    id: i64,
    body: SubmitLabel,
) -> AppResult<LabelReceipt> {
    let db = &state.db;
    let k = response_count(state, id).await?;
    validate_label(&body, k)?;
    let row = label_values(id, labeler, body)?;
    let stored = store_label(state, id, labeler, row).await;
    let (label_id, state_after) = match stored {
        Ok(Some(stored)) => stored,
        Ok(None) => return Err(why_no_slot(db, id, labeler).await),
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::Conflict(format!(
                "you already labeled comparison {id}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    state
        .metrics
        .labels_submitted
        .fetch_add(1, Ordering::Relaxed);
    Ok(LabelReceipt {
        label_id,
        comparison_id: id,
        comparison_complete: state_after == COMPLETE,
    })
}

/// The columns of a new `labels` row, in [`LABEL_COLUMNS`] order.
fn label_values(id: i64, labeler: i64, body: SubmitLabel) -> AppResult<Vec<Value>> {
    let ranking =
        serde_json::to_string(&body.ranking).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(vec![
        id.into(),
        labeler.into(),
        ranking.into(),
        body.strength.as_str().to_string().into(),
        body.safety.map(|s| s.as_str().to_string()).into(),
        body.edited_response.filter(|s| !s.trim().is_empty()).into(),
        body.note.filter(|s| !s.trim().is_empty()).into(),
        body.time_spent_ms.map(|t| t as i64).into(),
        now_ms().into(),
    ])
}

/// Columns of `labels` that [`label_values`] fills.
const LABEL_COLUMNS: &str = "comparison_id, labeler_id, ranking, strength, safety, \
                             edited_response, note, time_spent_ms, created_at";

/// `SET` and `WHERE` of the counter update that turns a slot into a label: the
/// slot is the labeler's dropped lease (`?` = 1); without one nothing changes.
/// `SET` expressions see the old row, so `labels_done + 1` is the new count.
const COUNT_LABEL: &str = "labels_done = labels_done + 1, leased = leased - 1, \
    state = CASE WHEN labels_done + 1 >= labels_wanted THEN 'complete' ELSE state END \
    WHERE id = ? AND ? = 1";

/// Drops the labeler's lease, counts the label and inserts it, as one write.
/// `None` when there was no lease (nothing changed); a unique violation
/// (already labeled) undoes all of it.
///
/// SQLite: three statements in the writer's transaction; `changes()` is the
/// row count of the previous statement: the dropped lease in the counter
/// update, the counted slot in the insert. PostgreSQL: the same three steps as
/// one statement of data-modifying CTEs (they all run); `slot` is empty when
/// there was no lease, and then nothing is inserted.
async fn store_label(
    state: &AppState,
    id: i64,
    labeler: i64,
    row: Vec<Value>,
) -> Result<Option<(i64, String)>, sea_orm::DbErr> {
    let sql = match state.db.get_database_backend() {
        DbBackend::Postgres => format!(
            "WITH gone AS (DELETE FROM leases WHERE comparison_id = ? AND labeler_id = ? RETURNING id), \
             had AS (SELECT CAST(COUNT(*) AS INTEGER) AS n FROM gone), \
             slot AS (UPDATE comparisons SET {} RETURNING id, state), \
             ins AS (INSERT INTO labels ({LABEL_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM slot RETURNING id) \
             SELECT ins.id, slot.state FROM ins, slot",
            COUNT_LABEL.replacen("? = 1", "(SELECT n FROM had) = 1", 1)
        ),
        _ => format!(
            "DELETE FROM leases WHERE comparison_id = ? AND labeler_id = ?; \
             UPDATE comparisons SET {} RETURNING state; \
             INSERT INTO labels ({LABEL_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? \
               WHERE changes() = 1 RETURNING id",
            COUNT_LABEL.replacen("? = 1", "changes() = 1", 1)
        ),
    };
    let mut values: Vec<Value> = vec![id.into(), labeler.into(), id.into()];
    values.extend(row);
    let rows = state.writer.write(&sql, values).await?;
    match rows.as_slice() {
        // PostgreSQL: one row (label id, state)
        [r] => Ok(Some((r.try_get_by_index(0)?, r.try_get_by_index(1)?))),
        // SQLite: the new state (counter update), then the new label's id
        [counted, inserted] => Ok(Some((
            inserted.try_get_by_index(0)?,
            counted.try_get_by_index(0)?,
        ))),
        _ => Ok(None),
    }
}

/// Explains why a label without a lease is refused.
async fn why_no_slot(db: &DatabaseConnection, id: i64, labeler: i64) -> AppError {
    let already = labels::Entity::find()
        .filter(labels::Column::ComparisonId.eq(id))
        .filter(labels::Column::LabelerId.eq(labeler))
        .one(db)
        .await;
    match already {
        Ok(Some(_)) => AppError::Conflict(format!("you already labeled comparison {id}")),
        Ok(None) => AppError::Conflict(format!(
            "you hold no lease on comparison {id} (it expired, you skipped it, or it was never \
             handed to you); get the next task"
        )),
        Err(e) => e.into(),
    }
}

/// `labeler` skips comparison `id`: their lease (if any) is released and the
/// comparison is never offered to them again.
pub async fn skip(state: &AppState, labeler: i64, id: i64) -> AppResult<()> {
    let db = &state.db;
    response_count(state, id).await?;
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

/// Loads a comparison as a task (404 if it does not exist).
async fn load_task(state: &AppState, id: i64, lease_expires: i64) -> AppResult<Task> {
    let db = &state.db;
    let sql = task_sql("(SELECT CAST(? AS BIGINT) AS id) k", "TRUE");
    let rows = db.query_all_raw(stmt(db, &sql, vec![id.into()])).await?;
    task_from_rows(state, &rows, lease_expires)?
        .ok_or_else(|| AppError::NotFound(format!("no comparison {id}")))
}

/// A task from the rows of [`task_sql`]; `None` when there are none.
fn task_from_rows(
    state: &AppState,
    rows: &[sea_orm::QueryResult],
    lease_expires: i64,
) -> AppResult<Option<Task>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let id: i64 = first.try_get_by_index(0)?;
    let batch_id: i64 = first.try_get_by_index(1)?;
    let messages: String = first.try_get_by_index(2)?;
    let tags: String = first.try_get_by_index(3)?;
    let mut responses = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(text) = row.try_get_by_index::<Option<String>>(4)? {
            responses.push(TaskResponse {
                position: responses.len(),
                text,
            });
        }
    }
    // the label that follows is checked against this count
    state.response_counts.put(id, responses.len());
    Ok(Some(Task {
        comparison_id: id,
        batch_id,
        prompt: parse_messages(&messages),
        tags: parse_tags(&tags),
        responses,
        lease_expires_at: rfc3339(lease_expires),
    }))
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
