//! The append-only audit log: who did what, when.
use crate::entities::audit_log;
use crate::error::AppResult;
use crate::time::now_ms;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

/// Appends an entry. `detail` is free-form JSON (never secrets).
pub async fn record<C: ConnectionTrait>(
    db: &C,
    user_id: Option<i64>,
    action: &str,
    detail: serde_json::Value,
) -> AppResult<()> {
    audit_log::ActiveModel {
        user_id: Set(user_id),
        action: Set(action.to_string()),
        detail: Set(detail.to_string()),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}
