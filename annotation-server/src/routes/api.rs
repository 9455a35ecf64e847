//! REST API handlers (`/api/...`): bearer tokens, role checks on every route.
use super::extract::{ApiJson, ApiPath, ApiQuery, RawBody};
use crate::accounts;
use crate::api::{
    AuditEntry, BatchAgreement, BatchProgress, ComparisonDetail, CreateComparisons,
    CreatedComparisons, ExportFormat, ExportQuery, ImportResult, LabelReceipt, LabelerProgress, Me,
    NewRound, NewToken, NewUser, Prompt, PromptImport, Round, RoundClaim, RoundHeartbeat,
    RoundUpdate, SubmitLabel, Task, TokenCreated, TokenInfo, UserInfo,
};
use crate::assign;
use crate::audit;
use crate::auth::ApiUser;
use crate::comparisons;
use crate::entities::audit_log;
use crate::error::{AppError, AppResult};
use crate::export;
use crate::openapi::ExportRow;
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
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "accounts",
    summary = "The caller's account",
    description = "Role: any.",
    responses(
        (status = 200, description = "the caller", body = Me),
    ),
)]
pub async fn me(ApiUser(u): ApiUser) -> Json<Me> {
    Json(Me {
        id: u.id,
        username: u.username,
        role: u.role,
    })
}

/// `GET /api/users` (admin)
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "accounts",
    summary = "List users",
    description = "Role: admin.",
    responses(
        (status = 200, description = "users", body = Vec<UserInfo>),
    ),
)]
pub async fn list_users(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<UserInfo>>> {
    u.require_admin()?;
    Ok(Json(accounts::list_users(&s.db).await?))
}

/// `POST /api/users` (admin)
#[utoipa::path(
    post,
    path = "/api/users",
    tag = "accounts",
    summary = "Create a user",
    description = "Role: admin.",
    request_body = NewUser,
    responses(
        (status = 201, description = "created", body = UserInfo),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/users/{username}/disable",
    tag = "accounts",
    summary = "Disable a user",
    description = "Role: admin.",
    params(("username" = String, Path, description = "the user's login name")),
    responses(
        (status = 200, description = "disabled", body = UserInfo),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/users/{username}/tokens",
    tag = "accounts",
    summary = "Create an API token for a user",
    description = "Role: admin.",
    params(("username" = String, Path, description = "the user's login name")),
    request_body = NewToken,
    responses(
        (status = 201, description = "the token (shown once)", body = TokenCreated),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/users/{username}/tokens",
    tag = "accounts",
    summary = "List a user's API tokens (never the secrets)",
    description = "Role: admin.",
    params(("username" = String, Path, description = "the user's login name")),
    responses(
        (status = 200, description = "tokens", body = Vec<TokenInfo>),
    ),
)]
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
#[utoipa::path(
    delete,
    path = "/api/tokens/{id}",
    tag = "accounts",
    summary = "Revoke an API token (at once, on every server sharing the database)",
    description = "Role: admin.",
    params(("id" = i64, Path, description = "the token's id")),
    responses(
        (status = 204, description = "revoked"),
    ),
)]
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
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Only items with an id greater than this.
    #[serde(default)]
    after_id: i64,
    /// At most this many (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
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
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "accounts",
    summary = "Audit log",
    description = "Role: admin.",
    params(Page),
    responses(
        (status = 200, description = "entries", body = Vec<AuditEntry>),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/prompts/import",
    tag = "data",
    summary = "Import prompts (JSONL, all or nothing)",
    description = "Role: researcher.",
    request_body(
        content = PromptImport,
        content_type = "application/x-ndjson",
        description = "one PromptImport object per line"
    ),
    responses(
        (status = 201, description = "imported", body = ImportResult),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/prompts",
    tag = "data",
    summary = "List prompts",
    description = "Role: researcher.",
    params(Page),
    responses(
        (status = 200, description = "prompts", body = Vec<Prompt>),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/comparisons",
    tag = "data",
    summary = "Create comparisons from generated responses (bulk, into a batch)",
    description = "Role: researcher.",
    request_body = CreateComparisons,
    responses(
        (status = 201, description = "created", body = CreatedComparisons),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/comparisons/{id}",
    tag = "data",
    summary = "A comparison with labels and consensus",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the comparison's id")),
    responses(
        (status = 200, description = "comparison", body = ComparisonDetail),
    ),
)]
pub async fn comparison(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<ComparisonDetail>> {
    u.require_researcher()?;
    Ok(Json(comparisons::detail(&s.db, id).await?))
}

/// `GET /api/batches` (researcher)
#[utoipa::path(
    get,
    path = "/api/batches",
    tag = "data",
    summary = "Progress of every batch",
    description = "Role: researcher.",
    responses(
        (status = 200, description = "batches", body = Vec<BatchProgress>),
    ),
)]
pub async fn batches(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<BatchProgress>>> {
    u.require_researcher()?;
    Ok(Json(progress::batches_progress(&s.db, None).await?))
}

/// `GET /api/batches/{id}` (researcher)
#[utoipa::path(
    get,
    path = "/api/batches/{id}",
    tag = "data",
    summary = "Progress of a batch",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the batch's id")),
    responses(
        (status = 200, description = "batch", body = BatchProgress),
    ),
)]
pub async fn batch(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<BatchProgress>> {
    u.require_researcher()?;
    Ok(Json(progress::batch_progress(&s.db, id).await?))
}

/// `GET /api/batches/{id}/agreement` (researcher)
#[utoipa::path(
    get,
    path = "/api/batches/{id}/agreement",
    tag = "data",
    summary = "Inter-annotator agreement (Krippendorff's alpha on pairwise choices) and agreement with consensus",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the batch's id")),
    responses(
        (status = 200, description = "agreement", body = BatchAgreement),
    ),
)]
pub async fn agreement(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<BatchAgreement>> {
    u.require_researcher()?;
    Ok(Json(progress::batch_agreement(&s.db, id).await?))
}

/// `GET /api/labelers` (researcher): per-labeler totals.
#[utoipa::path(
    get,
    path = "/api/labelers",
    tag = "data",
    summary = "Labels and skips per labeler",
    description = "Role: researcher.",
    responses(
        (status = 200, description = "labelers", body = Vec<LabelerProgress>),
    ),
)]
pub async fn labelers(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<LabelerProgress>>> {
    u.require_researcher()?;
    Ok(Json(progress::labelers_progress(&s.db, None).await?))
}

/// `GET /api/export` (researcher): streamed JSONL.
#[utoipa::path(
    get,
    path = "/api/export",
    tag = "data",
    summary = "Export preference data as streamed JSONL",
    description = "Role: researcher.",
    params(ExportQuery),
    responses(
        (
            status = 200,
            description = "JSONL rows (TrlRow, HhRow or RawRow, by `format`)",
            content_type = "application/x-ndjson",
            body = ExportRow
        ),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/tasks/next",
    tag = "labeling",
    summary = "Lease the caller's next task (POST: it changes state)",
    description = "Role: any (labeler).",
    responses(
        (status = 200, description = "a task", body = Task),
        (status = 204, description = "nothing to label now"),
    ),
)]
pub async fn next_task(State(s): State<AppState>, ApiUser(u): ApiUser) -> AppResult<Response> {
    u.require_labeler()?;
    Ok(match assign::next_task(&s, u.id).await? {
        Some(t) => Json::<Task>(t).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /api/tasks/{id}/label`
#[utoipa::path(
    post,
    path = "/api/tasks/{id}/label",
    tag = "labeling",
    summary = "Submit a label for a comparison the caller holds a lease on (409 without one)",
    description = "Role: any (labeler).",
    params(("id" = i64, Path, description = "the comparison's id")),
    request_body = SubmitLabel,
    responses(
        (status = 201, description = "stored", body = LabelReceipt),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/tasks/{id}/skip",
    tag = "labeling",
    summary = "Skip a comparison (never offered again)",
    description = "Role: any (labeler).",
    params(("id" = i64, Path, description = "the comparison's id")),
    responses(
        (status = 204, description = "skipped"),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/rounds",
    tag = "rounds",
    summary = "List rounds",
    description = "Role: researcher.",
    responses(
        (status = 200, description = "rounds", body = Vec<Round>),
    ),
)]
pub async fn list_rounds(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
) -> AppResult<Json<Vec<Round>>> {
    u.require_researcher()?;
    Ok(Json(rounds::list(&s.db).await?))
}

/// `POST /api/rounds` (researcher)
#[utoipa::path(
    post,
    path = "/api/rounds",
    tag = "rounds",
    summary = "Create a round",
    description = "Role: researcher.",
    request_body = NewRound,
    responses(
        (status = 201, description = "created", body = Round),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/api/rounds/{id}",
    tag = "rounds",
    summary = "A round",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the round's id")),
    responses(
        (status = 200, description = "round", body = Round),
    ),
)]
pub async fn round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
) -> AppResult<Json<Round>> {
    u.require_researcher()?;
    Ok(Json(rounds::get(&s.db, id).await?))
}

/// `PATCH /api/rounds/{id}` (researcher)
#[utoipa::path(
    patch,
    path = "/api/rounds/{id}",
    tag = "rounds",
    summary = "Update a round's status and metrics",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the round's id")),
    request_body = RoundUpdate,
    responses(
        (status = 200, description = "updated", body = Round),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/rounds/claim",
    tag = "rounds",
    summary = "Claim the oldest queued round (or a running one whose lease expired) for a worker: it becomes running under a lease whose secret lease_token only this response carries. Race-free: concurrent claimers never get the same round.",
    description = "Role: researcher.",
    request_body = RoundClaim,
    responses(
        (status = 200, description = "the claimed round", body = Round),
        (status = 204, description = "nothing to claim"),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/rounds/{id}/heartbeat",
    tag = "rounds",
    summary = "Extend the worker's lease and report status, state and metrics; 409 when the lease token is not the round's current lease (lost or never held)",
    description = "Role: researcher.",
    params(("id" = i64, Path, description = "the round's id")),
    request_body = RoundHeartbeat,
    responses(
        (status = 200, description = "updated", body = Round),
    ),
)]
pub async fn heartbeat_round(
    State(s): State<AppState>,
    ApiUser(u): ApiUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<RoundHeartbeat>,
) -> AppResult<Json<Round>> {
    u.require_researcher()?;
    Ok(Json(rounds::heartbeat(&s.db, id, body, u.id).await?))
}
