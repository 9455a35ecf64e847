//! Alignment rounds: created by researchers, the CLI or the dashboard, and run
//! by trainer workers. A worker claims a queued round under a lease
//! ([`claim`]), keeps the lease alive and reports progress with heartbeats
//! ([`heartbeat`]), and finishes it by setting its status to `done` or
//! `failed`. A round whose lease expired (its worker died) can be claimed again
//! by another worker, which continues from the round's `state`.
//!
//! Both operations are a single conditional `UPDATE` whose `WHERE` re-checks
//! the claimability or ownership of the row; its row count tells whether the
//! caller won. That is atomic on SQLite and PostgreSQL alike, so two
//! concurrent claimers never get the same round and a worker that lost its
//! lease cannot overwrite the new owner's progress.
use crate::api::{NewRound, Round, RoundClaim, RoundHeartbeat, RoundStatus, RoundUpdate};
use crate::db::begin_write;
use crate::entities::rounds;
use crate::error::{reject_nul, AppError, AppResult};
use crate::time::{now_ms, rfc3339};
use crate::{audit, auth};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

use RoundStatus::{Cancelled, Created, Done, Failed, Queued, Running};

/// Whether a researcher may move a round from `from` to `to` by hand. A round
/// becomes `running` only through a claim (which gives it a lease) and `done`
/// only through its worker's heartbeat; `done` is final.
pub fn may_set_by_hand(from: RoundStatus, to: RoundStatus) -> bool {
    matches!(
        (from, to),
        (Created, Queued)
            | (Queued, Created)
            | (Running | Failed | Cancelled, Queued)
            | (Running, Failed)
            | (Created | Queued | Running | Failed, Cancelled)
    )
}

/// Lease length when the worker does not ask for one (seconds).
pub const DEFAULT_LEASE_SECONDS: u64 = 300;
/// Longest lease a worker may ask for (seconds).
pub const MAX_LEASE_SECONDS: u64 = 86_400;

/// How many claimable rounds one claim attempt looks at.
const CANDIDATES: u64 = 16;

/// The API view of a stored round.
pub fn view(r: rounds::Model) -> Round {
    Round {
        id: r.id,
        name: r.name,
        config: serde_json::from_str(&r.config).unwrap_or_default(),
        status: r.status,
        metrics: serde_json::from_str(&r.metrics).unwrap_or_default(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        lease_owner: r.lease_owner,
        lease_expires_at: r.lease_expires_at.map(rfc3339),
        lease_token: None,
        state: serde_json::from_str(&r.state)
            .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
    }
}

fn object(v: Option<serde_json::Value>, what: &str) -> AppResult<String> {
    match v.unwrap_or_else(|| serde_json::json!({})) {
        o @ serde_json::Value::Object(_) => {
            let text = o.to_string();
            // PostgreSQL text cannot hold NUL; JSON escapes it as \u0000
            if text.contains("\\u0000") {
                return Err(AppError::Unprocessable(format!(
                    "{what} contains a NUL character"
                )));
            }
            Ok(text)
        }
        _ => Err(AppError::Unprocessable(format!(
            "{what} must be a JSON object"
        ))),
    }
}

/// Reads a status: one of [`RoundStatus`] (422 otherwise).
pub fn validate_status(s: &str) -> AppResult<RoundStatus> {
    s.parse().map_err(|_| {
        AppError::Unprocessable(format!(
            "status must be one of {}",
            RoundStatus::ALL.map(RoundStatus::as_str).join(", ")
        ))
    })
}

/// Checks a round name: 1-200 characters, not blank, no NUL.
pub fn validate_name(name: &str) -> AppResult<()> {
    reject_nul(name, "name")?;
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(AppError::Unprocessable(
            "name must have 1-200 characters".into(),
        ));
    }
    Ok(())
}

fn validate_worker(worker: &str) -> AppResult<()> {
    if worker.trim().is_empty() || worker.chars().count() > 100 {
        return Err(AppError::Unprocessable(
            "worker must have 1-100 characters".into(),
        ));
    }
    if worker.chars().any(char::is_control) {
        return Err(AppError::Unprocessable(
            "worker must not contain control characters".into(),
        ));
    }
    Ok(())
}

fn lease_ms(lease_seconds: Option<u64>) -> AppResult<i64> {
    match lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS) {
        s @ 1..=MAX_LEASE_SECONDS => Ok(s as i64 * 1000),
        _ => Err(AppError::Unprocessable(format!(
            "lease_seconds must be between 1 and {MAX_LEASE_SECONDS}"
        ))),
    }
}

/// Creates a round with status `created` (default) or `queued`.
pub async fn create(db: &DatabaseConnection, req: NewRound, actor: i64) -> AppResult<Round> {
    validate_name(&req.name)?;
    let status = match req.status.as_deref().map(str::parse) {
        None | Some(Ok(Created)) => Created,
        Some(Ok(Queued)) => Queued,
        Some(_) => {
            return Err(AppError::Unprocessable(
                "a new round's status must be `created` or `queued`".into(),
            ))
        }
    };
    let config = object(req.config, "config")?;
    let now = now_ms();
    let r = rounds::ActiveModel {
        name: Set(req.name),
        config: Set(config),
        status: Set(status.into()),
        metrics: Set("{}".into()),
        created_at: Set(now),
        updated_at: Set(now),
        lease_owner: Set(None),
        lease_expires_at: Set(None),
        lease_token_hash: Set(None),
        state: Set("{}".into()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    audit::record(
        db,
        Some(actor),
        "round.create",
        serde_json::json!({"round_id": r.id, "status": status.as_str()}),
    )
    .await?;
    Ok(view(r))
}

/// All rounds, by id.
pub async fn list(db: &DatabaseConnection) -> AppResult<Vec<Round>> {
    Ok(rounds::Entity::find()
        .order_by_asc(rounds::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(view)
        .collect())
}

/// The round `id` (404 if there is none).
pub async fn get(db: &DatabaseConnection, id: i64) -> AppResult<Round> {
    find(db, id).await.map(view)
}

async fn find<C: ConnectionTrait>(db: &C, id: i64) -> AppResult<rounds::Model> {
    rounds::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no round {id}")))
}

/// Changes status and/or metrics by hand. Status changes are checked
/// ([`may_set_by_hand`]; 409 otherwise) and release the lease; the change is
/// conditional on the status read, so a concurrent claim or heartbeat is
/// never overwritten (409: try again).
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    req: RoundUpdate,
    actor: i64,
) -> AppResult<Round> {
    if let Some(reason) = &req.reason {
        reject_nul(reason, "reason")?;
        if reason.chars().count() > 500 {
            return Err(AppError::Unprocessable(
                "reason must have at most 500 characters".into(),
            ));
        }
    }
    let metrics = req
        .metrics
        .clone()
        .map(|m| object(Some(m), "metrics"))
        .transpose()?;
    let r = find(db, id).await?;
    let change = match &req.status {
        Some(to) if *to != r.status => {
            let to = validate_status(to)?;
            // a stored word that is no status (none is written) can only be left by hand
            let allowed = r.status.parse().is_ok_and(|from| may_set_by_hand(from, to));
            if !allowed {
                return Err(AppError::Conflict(format!(
                    "round {id} cannot go from `{}` to `{to}` by hand{}",
                    r.status,
                    match to {
                        Running => " (a worker's claim makes a round running)",
                        Done => " (its worker finishes it)",
                        _ => "",
                    }
                )));
            }
            Some(to)
        }
        _ => None,
    };
    let (_w, txn) = begin_write(db).await?;
    let mut q =
        rounds::Entity::update_many().col_expr(rounds::Column::UpdatedAt, Expr::value(now_ms()));
    if let Some(to) = &change {
        q = q
            .col_expr(rounds::Column::Status, Expr::value(to.as_str()))
            .col_expr(
                rounds::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                rounds::Column::LeaseExpiresAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                rounds::Column::LeaseTokenHash,
                Expr::value(Option::<String>::None),
            );
    }
    if let Some(m) = metrics {
        q = q.col_expr(rounds::Column::Metrics, Expr::value(m));
    }
    let updated = q
        .filter(rounds::Column::Id.eq(id))
        .filter(rounds::Column::Status.eq(r.status.as_str()))
        .exec(&txn)
        .await?
        .rows_affected;
    if updated == 0 {
        txn.rollback().await?;
        return Err(AppError::Conflict(format!(
            "round {id} changed meanwhile; read it and try again"
        )));
    }
    let r = find(&txn, id).await?;
    audit::record(
        &txn,
        Some(actor),
        "round.update",
        serde_json::json!({"round_id": id, "status": req.status, "reason": req.reason}),
    )
    .await?;
    txn.commit().await?;
    Ok(view(r))
}

/// Rounds a worker may claim at `now`: queued, or running with an expired lease.
fn claimable(now: i64) -> Condition {
    Condition::any()
        .add(rounds::Column::Status.eq(Queued.as_str()))
        .add(
            Condition::all()
                .add(rounds::Column::Status.eq(Running.as_str()))
                .add(rounds::Column::LeaseExpiresAt.lt(now)),
        )
}

/// Claims the oldest claimable round for `req.worker`: it becomes `running`
/// under a lease of `req.lease_seconds`, held by the fresh secret returned in
/// the round's `lease_token` (this response is the only place it appears).
/// `None` when there is nothing to claim.
pub async fn claim(
    db: &DatabaseConnection,
    req: RoundClaim,
    actor: i64,
) -> AppResult<Option<Round>> {
    validate_worker(&req.worker)?;
    let lease = lease_ms(req.lease_seconds)?;
    // each pass looks at a window of candidates; losing every one of them to
    // concurrent claimers means the window moved on, so look again
    for _ in 0..8 {
        let candidates: Vec<(i64, String, Option<String>)> = rounds::Entity::find()
            .select_only()
            .column(rounds::Column::Id)
            .column(rounds::Column::Status)
            .column(rounds::Column::LeaseOwner)
            .filter(claimable(now_ms()))
            .order_by_asc(rounds::Column::Id)
            .limit(CANDIDATES)
            .into_tuple()
            .all(db)
            .await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        for (id, was, previous_owner) in candidates {
            let token = auth::new_token();
            let (_w, txn) = begin_write(db).await?;
            let now = now_ms();
            let won = rounds::Entity::update_many()
                .col_expr(rounds::Column::Status, Expr::value(Running.as_str()))
                .col_expr(rounds::Column::LeaseOwner, Expr::value(req.worker.clone()))
                .col_expr(
                    rounds::Column::LeaseTokenHash,
                    Expr::value(auth::sha256_hex(&token)),
                )
                .col_expr(rounds::Column::LeaseExpiresAt, Expr::value(now + lease))
                .col_expr(rounds::Column::UpdatedAt, Expr::value(now))
                .filter(rounds::Column::Id.eq(id))
                .filter(claimable(now))
                .exec(&txn)
                .await?
                .rows_affected
                == 1;
            if !won {
                txn.rollback().await?;
                continue;
            }
            let r = find(&txn, id).await?;
            audit::record(
                &txn,
                Some(actor),
                "round.claim",
                serde_json::json!({
                    "round_id": id, "worker": req.worker, "lease_seconds": lease / 1000,
                    "was": was, "previous_owner": if was == Running.as_str() { previous_owner } else { None },
                }),
            )
            .await?;
            txn.commit().await?;
            return Ok(Some(Round {
                lease_token: Some(token),
                ..view(r)
            }));
        }
    }
    // persistent contention: the caller polls again later
    Ok(None)
}

/// Extends the lease on round `id` and replaces the status, state and
/// metrics sent. Only the holder of the current lease token of a `running`
/// round may do this (409 otherwise: the lease was lost, or never held). A
/// status other than `running` releases the lease.
pub async fn heartbeat(
    db: &DatabaseConnection,
    id: i64,
    req: RoundHeartbeat,
    actor: i64,
) -> AppResult<Round> {
    validate_worker(&req.worker)?;
    let lease = lease_ms(req.lease_seconds)?;
    // the worker keeps it running, finishes it, gives up or hands it back
    let status = match req.status.as_deref().map(str::parse) {
        None => None,
        Some(Ok(s @ (Running | Done | Failed | Queued))) => Some(s),
        Some(_) => {
            return Err(AppError::Unprocessable(format!(
                "a heartbeat's status must be one of {Running}, {Done}, {Failed}, {Queued}"
            )))
        }
    };
    let state = req.state.map(|v| object(Some(v), "state")).transpose()?;
    let metrics = req
        .metrics
        .map(|v| object(Some(v), "metrics"))
        .transpose()?;
    let releases = status.is_some_and(|s| s != Running);

    let (_w, txn) = begin_write(db).await?;
    let now = now_ms();
    let mut q = rounds::Entity::update_many().col_expr(rounds::Column::UpdatedAt, Expr::value(now));
    if releases {
        q = q
            .col_expr(
                rounds::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                rounds::Column::LeaseExpiresAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                rounds::Column::LeaseTokenHash,
                Expr::value(Option::<String>::None),
            );
    } else {
        q = q.col_expr(rounds::Column::LeaseExpiresAt, Expr::value(now + lease));
    }
    if let Some(s) = status {
        q = q.col_expr(rounds::Column::Status, Expr::value(s.as_str()));
    }
    if let Some(s) = state {
        q = q.col_expr(rounds::Column::State, Expr::value(s));
    }
    if let Some(m) = metrics {
        q = q.col_expr(rounds::Column::Metrics, Expr::value(m));
    }
    // an expired lease that nobody took over yet is still the worker's: the
    // claim that would take it over replaces the token hash in one statement
    let updated = q
        .filter(rounds::Column::Id.eq(id))
        .filter(rounds::Column::Status.eq(Running.as_str()))
        .filter(rounds::Column::LeaseOwner.eq(req.worker.as_str()))
        .filter(rounds::Column::LeaseTokenHash.eq(auth::sha256_hex(&req.lease_token)))
        .exec(&txn)
        .await?
        .rows_affected;
    let r = find(&txn, id).await?;
    if updated == 0 {
        txn.rollback().await?;
        let why = match (&r.lease_owner, r.status.parse::<RoundStatus>()) {
            (Some(owner), Ok(Running)) if *owner != req.worker => format!(
                "lease lost: round {id} is now held by worker `{owner}`, not `{}` (the lease expired and another worker claimed the round)",
                req.worker
            ),
            (Some(_), Ok(Running)) => format!(
                "lease lost: round {id}: the lease token does not match the round's current lease (send the token of the claim; a newer claim replaces it)"
            ),
            _ => format!(
                "lease lost: round {id} is not running under worker `{}` (its status is `{}`)",
                req.worker, r.status
            ),
        };
        return Err(AppError::Conflict(why));
    }
    if req.status.is_some() {
        audit::record(
            &txn,
            Some(actor),
            "round.status",
            serde_json::json!({"round_id": id, "worker": req.worker, "status": req.status}),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(view(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_transitions() {
        let by_hand = |from, to| may_set_by_hand(from, to);
        assert!(by_hand(Created, Queued) && by_hand(Queued, Created));
        assert!(by_hand(Running, Queued) && by_hand(Failed, Queued) && by_hand(Cancelled, Queued));
        assert!(by_hand(Running, Failed));
        for from in [Created, Queued, Running, Failed] {
            assert!(by_hand(from, Cancelled), "{from}");
        }
        // running only by a claim, done only by the worker, and done is final
        for from in RoundStatus::ALL {
            assert!(!by_hand(from, Running) && !by_hand(from, Done), "{from}");
            assert!(!by_hand(Done, from), "{from}");
        }
        assert_eq!(validate_status("queued").unwrap(), Queued);
        let err = validate_status("banana").unwrap_err().to_string();
        assert_eq!(
            err,
            "status must be one of created, queued, running, done, failed, cancelled"
        );
    }
}
