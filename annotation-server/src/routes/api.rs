//! REST API handlers (`/api/...`): bearer tokens, role checks on every route.
use super::extract::{ApiJson, ApiPath, ApiQuery, RawBody};
use crate::accounts;
use crate::api::{
    AuditEntry, BatchAgreement, BatchProgress, ComparisonDetail, CreateComparisons,
    CreatedComparisons, ExportFormat, ExportQuery, ImportResult, LabelReceipt, LabelerProgress,
    NewRound, NewToken, NewUser, Prompt, Round, RoundClaim, RoundHeartbeat, RoundUpdate,
    SubmitLabel, Task, TokenCreated, TokenInfo, UserInfo,
};
use crate::assign;
use crate::audit;
use crate::auth::ApiUser;
use crate::comparisons;
use crate::entities::audit_log;
use crate::error::{AppError, AppResult};
use crate::export;
use crate::progress;
use crate::prompts;
use crate::rounds;
use crate::state::AppState;
use crate::time::rfc3339;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;

/// `GET /api/me`
pub async fn me(ApiUser(u): ApiUser) -> Json<serde_json::Value> {
    Json(serde_json::json!({"id": u.id, "username": u.username, "role": u.role}))
}

/// `GET /api/users` (admin)
pub async fn list_users(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<UserInfo>>> {
    u.require_admin()?;
    Ok(Json(accounts::list_users(&s.db).await?))
}

/// `POST /api/users` (admin)
pub async fn create_user(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiJson(body): ApiJson<NewUser>,
) -> AppResult<(StatusCode, Json<UserInfo>)> {
    u.require_admin()?;
    let info =
        accounts::create_user(&s.db, &body.username, &body.password, body.role, Some(u.id)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `POST /api/users/{username}/disable` (admin)
pub async fn disable_user(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(username): ApiPath<String>,
) -> AppResult<Json<UserInfo>> {
    u.require_admin()?;
    let info = accounts::disable_user(&s.db, &username, Some(u.id)).await?;
    s.token_cache.clear();
    Ok(Json(info))
}

/// `POST /api/users/{username}/tokens` (admin)
pub async fn create_token(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<NewToken>,
) -> AppResult<(StatusCode, Json<TokenCreated>)> {
    u.require_admin()?;
    let created = accounts::create_token_expiring(
        &s.db,
        &username,
        body.name.as_deref(),
        body.expires_in_days,
        Some(u.id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/users/{username}/tokens` (admin): the user's tokens (never the secrets).
pub async fn list_tokens(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(username): ApiPath<String>,
) -> AppResult<Json<Vec<TokenInfo>>> {
    u.require_admin()?;
    Ok(Json(accounts::list_tokens(&s.db, Some(&username)).await?))
}

/// `DELETE /api/tokens/{id}` (admin): revokes a token at once, on every
/// server sharing the database.
pub async fn revoke_token(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<StatusCode> {
    u.require_admin()?;
    accounts::revoke_token(&s.db, id, Some(u.id)).await?;
    s.token_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Paging of list endpoints.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Only items with id greater than this.
    #[serde(default)]
    after_id: i64,
    /// At most this many (1-1000, default 100).
    #[serde(default)]
    limit: Option<u64>,
}

impl Page {
    fn limit(&self) -> AppResult<u64> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(AppError::BadRequest(
                "limit must be between 1 and 1000".into(),
            )),
        }
    }
}

/// `GET /api/audit` (admin)
pub async fn audit_log(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiQuery(page): ApiQuery<Page>,
) -> AppResult<Json<Vec<AuditEntry>>> {
    u.require_admin()?;
    let rows = audit_log::Entity::find()
        .filter(audit_log::Column::Id.gt(page.after_id))
        .order_by_asc(audit_log::Column::Id)
        .limit(page.limit()?)
        .all(&s.db)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                user_id: r.user_id,
                action: r.action,
                detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
                created_at: rfc3339(r.created_at),
            })
            .collect(),
    ))
}

/// `POST /api/prompts/import` (researcher): JSONL body.
pub async fn import_prompts(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    RawBody(body): RawBody,
) -> AppResult<(StatusCode, Json<ImportResult>)> {
    u.require_researcher()?;
    Ok((
        StatusCode::CREATED,
        Json(prompts::import_jsonl(&s.db, &body, u.id).await?),
    ))
}

/// `GET /api/prompts` (researcher)
pub async fn list_prompts(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiQuery(page): ApiQuery<Page>,
) -> AppResult<Json<Vec<Prompt>>> {
    u.require_researcher()?;
    Ok(Json(
        prompts::list(&s.db, page.after_id, page.limit()?).await?,
    ))
}

/// `POST /api/comparisons` (researcher)
pub async fn create_comparisons(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiJson(body): ApiJson<CreateComparisons>,
) -> AppResult<(StatusCode, Json<CreatedComparisons>)> {
    u.require_researcher()?;
    Ok((
        StatusCode::CREATED,
        Json(comparisons::create(&s.db, body, u.id).await?),
    ))
}

/// `GET /api/comparisons/{id}` (researcher)
pub async fn comparison(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<ComparisonDetail>> {
    u.require_researcher()?;
    Ok(Json(comparisons::detail(&s.db, id).await?))
}

/// `GET /api/batches` (researcher)
pub async fn batches(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<BatchProgress>>> {
    u.require_researcher()?;
    Ok(Json(progress::batches_progress(&s.db, None).await?))
}

/// `GET /api/batches/{id}` (researcher)
pub async fn batch(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<BatchProgress>> {
    u.require_researcher()?;
    Ok(Json(progress::batch_progress(&s.db, id).await?))
}

/// `GET /api/batches/{id}/agreement` (researcher)
pub async fn agreement(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<BatchAgreement>> {
    u.require_researcher()?;
    Ok(Json(progress::batch_agreement(&s.db, id).await?))
}

/// `GET /api/labelers` (researcher): per-labeler totals.
pub async fn labelers(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<LabelerProgress>>> {
    u.require_researcher()?;
    Ok(Json(progress::labelers_progress(&s.db, None).await?))
}

/// `GET /api/export` (researcher): streamed JSONL.
pub async fn export(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> AppResult<Response> {
    export_response(&s, &u, &q).await
}

/// The export as a download, for `user` (researcher): the API and the
/// dashboard's links answer the same.
pub async fn export_response(
    s: &AppState,
    u: &crate::identity::CurrentUser,
    q: &ExportQuery,
) -> AppResult<Response> {
    u.require_researcher()?;
    let filter = export::Filter::from_query(q)?;
    filter.check_exists(&s.db).await?;
    audit::record(
        &s.db,
        Some(u.id),
        "export",
        serde_json::to_value(q).unwrap_or_default(),
    )
    .await?;
    let name = match filter.format() {
        ExportFormat::Trl => "preferences-trl.jsonl",
        ExportFormat::Hh => "preferences-hh.jsonl",
        ExportFormat::Raw => "labels-raw.jsonl",
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        export::stream(s.db.clone(), filter),
    )
        .into_response())
}

/// `POST /api/tasks/next`: the caller's next task (200) or nothing to do (204).
pub async fn next_task(State(s): State<AppState>, ApiUser(u): ApiUser) -> AppResult<Response> {
    u.require_labeler()?;
    Ok(match assign::next_task(&s, u.id).await? {
        Some(t) => Json::<Task>(t).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /api/tasks/{id}/label`
pub async fn submit_label(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<SubmitLabel>,
) -> AppResult<(StatusCode, Json<LabelReceipt>)> {
    u.require_labeler()?;
    Ok((
        StatusCode::CREATED,
        Json(assign::submit_label(&s, u.id, id, body).await?),
    ))
}

/// `POST /api/tasks/{id}/skip`
pub async fn skip(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<StatusCode> {
    u.require_labeler()?;
    assign::skip(&s, u.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/rounds` (researcher)
pub async fn list_rounds(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<Round>>> {
    u.require_researcher()?;
    Ok(Json(rounds::list(&s.db).await?))
}

/// `POST /api/rounds` (researcher)
pub async fn create_round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiJson(body): ApiJson<NewRound>,
) -> AppResult<(StatusCode, Json<Round>)> {
    u.require_researcher()?;
    Ok((
        StatusCode::CREATED,
        Json(rounds::create(&s.db, body, u.id).await?),
    ))
}

/// `GET /api/rounds/{id}` (researcher)
pub async fn round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<Round>> {
    u.require_researcher()?;
    Ok(Json(rounds::get(&s.db, id).await?))
}

/// `PATCH /api/rounds/{id}` (researcher)
pub async fn update_round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RoundUpdate>,
) -> AppResult<Json<Round>> {
    u.require_researcher()?;
    Ok(Json(rounds::update(&s.db, id, body, u.id).await?))
}

/// `POST /api/rounds/claim` (researcher): a worker claims the oldest queued
/// round (or a running one whose lease expired): 200 with it, 204 when none.
pub async fn claim_round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiJson(body): ApiJson<RoundClaim>,
) -> AppResult<Response> {
    u.require_researcher()?;
    Ok(match rounds::claim(&s.db, body, u.id).await? {
        Some(r) => Json(r).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /api/rounds/{id}/heartbeat` (researcher): the lease owner extends its
/// lease and reports status, state and metrics; 409 when the lease was lost.
pub async fn heartbeat_round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RoundHeartbeat>,
) -> AppResult<Json<Round>> {
    u.require_researcher()?;
    Ok(Json(rounds::heartbeat(&s.db, id, body, u.id).await?))
}
