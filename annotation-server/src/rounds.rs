//! Alignment rounds: created by researchers or the trainer, which reports
//! status and metrics as the round runs. The orchestration itself lives in the
//! trainer; the server only stores and shows rounds.
use crate::api::{NewRound, Round, RoundUpdate};
use crate::audit;
use crate::entities::rounds;
use crate::error::{reject_nul, AppError, AppResult};
use crate::time::{now_ms, rfc3339};
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, QueryOrder, Set};

fn view(r: rounds::Model) -> Round {
    Round {
        id: r.id,
        name: r.name,
        config: serde_json::from_str(&r.config).unwrap_or_default(),
        status: r.status,
        metrics: serde_json::from_str(&r.metrics).unwrap_or_default(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    }
}

fn object(v: Option<serde_json::Value>, what: &str) -> AppResult<String> {
    match v.unwrap_or_else(|| serde_json::json!({})) {
        o @ serde_json::Value::Object(_) => Ok(o.to_string()),
        _ => Err(AppError::Unprocessable(format!(
            "{what} must be a JSON object"
        ))),
    }
}

/// Creates a round with status `created`.
pub async fn create(db: &DatabaseConnection, req: NewRound, actor: i64) -> AppResult<Round> {
    reject_nul(&req.name, "name")?;
    if req.name.trim().is_empty() || req.name.chars().count() > 200 {
        return Err(AppError::Unprocessable(
            "name must have 1-200 characters".into(),
        ));
    }
    let now = now_ms();
    let r = rounds::ActiveModel {
        name: Set(req.name),
        config: Set(object(req.config, "config")?),
        status: Set("created".into()),
        metrics: Set("{}".into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    audit::record(
        db,
        Some(actor),
        "round.create",
        serde_json::json!({"round_id": r.id}),
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

/// One round.
pub async fn get(db: &DatabaseConnection, id: i64) -> AppResult<Round> {
    rounds::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(view)
        .ok_or_else(|| AppError::NotFound(format!("no round {id}")))
}

/// Changes status and/or metrics.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    req: RoundUpdate,
    actor: i64,
) -> AppResult<Round> {
    let r = rounds::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no round {id}")))?;
    let mut am: rounds::ActiveModel = r.into();
    if let Some(s) = &req.status {
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(AppError::Unprocessable(
                "status must be 1-32 characters of a-z and _".into(),
            ));
        }
        am.status = Set(s.clone());
    }
    if req.metrics.is_some() {
        am.metrics = Set(object(req.metrics, "metrics")?);
    }
    am.updated_at = Set(now_ms());
    let r = am.update(db).await?;
    audit::record(
        db,
        Some(actor),
        "round.update",
        serde_json::json!({"round_id": id, "status": req.status}),
    )
    .await?;
    Ok(view(r))
}
