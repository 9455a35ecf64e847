//! The HTTP router: API, UI, operations endpoints, and the middleware for
//! metrics, logging, security headers and body limits.
pub mod api;
pub mod extract;

use crate::error::AppError;
use crate::openapi;
use crate::progress;
use crate::state::AppState;
use crate::ui;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::time::Instant;

/// Builds the whole application.
pub fn router(state: AppState) -> Router {
    let import_limit = DefaultBodyLimit::max(state.config.import_body_limit);
    let api = Router::new()
        .route("/me", get(api::me))
        .route("/users", get(api::list_users).post(api::create_user))
        .route("/users/{username}/disable", post(api::disable_user))
        .route(
            "/users/{username}/tokens",
            get(api::list_tokens).post(api::create_token),
        )
        .route("/tokens/{id}", delete(api::revoke_token))
        .route("/audit", get(api::audit_log))
        .route(
            "/prompts/import",
            post(api::import_prompts).layer(import_limit),
        )
        .route("/prompts", get(api::list_prompts))
        .route(
            "/comparisons",
            post(api::create_comparisons).layer(import_limit),
        )
        .route("/comparisons/{id}", get(api::comparison))
        .route("/batches", get(api::batches))
        .route("/batches/{id}", get(api::batch))
        .route("/batches/{id}/agreement", get(api::agreement))
        .route("/labelers", get(api::labelers))
        .route("/export", get(api::export))
        // POST: taking a lease changes state, and a GET can be triggered by any link
        .route(
            "/tasks/next",
            post(api::next_task).get(|| async {
                AppError::MethodNotAllowed("use POST /api/tasks/next (it takes a lease)".into())
            }),
        )
        .route("/tasks/{id}/label", post(api::submit_label))
        .route("/tasks/{id}/skip", post(api::skip))
        .route("/rounds", get(api::list_rounds).post(api::create_round))
        .route("/rounds/claim", post(api::claim_round))
        .route("/rounds/{id}", get(api::round).patch(api::update_round))
        .route("/rounds/{id}/heartbeat", post(api::heartbeat_round))
        .route("/openapi.json", get(openapi_json))
        .fallback(api_not_found);
    Router::new()
        .nest("/api", api)
        .route("/", get(ui::index))
        .route("/login", get(ui::login_form).post(ui::login))
        .route("/logout", post(ui::logout))
        .route("/label", get(ui::label_page))
        .route("/label/{id}", post(ui::submit))
        .route("/label/{id}/skip", post(ui::skip))
        .route("/dashboard", get(ui::dashboard))
        .route("/dashboard/export", get(ui::export))
        .route("/dashboard/batches/{id}/agreement", get(ui::agreement))
        .route("/dashboard/rounds", post(ui::queue_round))
        .route("/dashboard/rounds/{id}", get(ui::round_page))
        .route("/dashboard/rounds/{id}/cancel", post(ui::cancel_round))
        .route(
            "/dashboard/rounds/{id}/plots/{series}",
            get(ui::series_plot),
        )
        .route("/dashboard/plots/{metric}", get(ui::summary_plot))
        .route(
            "/static/app.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    ui::APP_CSS,
                )
            }),
        )
        .route(
            "/static/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    ui::APP_JS,
                )
            }),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(page_not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// `GET /api/openapi.json`: the OpenAPI document (see [`openapi`]).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    summary = "This document",
    security(),
    responses((status = 200, description = "OpenAPI 3.1", body = Object)),
)]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn api_not_found() -> AppError {
    AppError::NotFound("no such API route; see /api/openapi.json".into())
}

async fn page_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::response::Html(
            "<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Home</a></p>",
        ),
    )
        .into_response()
}

/// `GET /healthz`: 200 when the database answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Health check (database ping)",
    security(),
    responses(
        (status = 200, description = "ok"),
        (status = 503, description = "database unavailable"),
    ),
)]
pub async fn healthz(State(s): State<AppState>) -> Response {
    match s.db.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "database unavailable"})),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format. Needs a researcher's (or admin's)
/// bearer token unless `Config::metrics_public`: route counts and queue depth
/// are not for everyone.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (researcher or admin token, unless the server runs with --metrics-public)",
    responses(
        (status = 200, description = "text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "no token"),
    ),
)]
pub async fn metrics(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, AppError> {
    if !s.config.metrics_public {
        crate::auth::bearer_user(&s, &headers)
            .await?
            .require_researcher()?;
    }
    let (depth, leases) = progress::queue_depth(&s.db).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(depth, leases),
    )
        .into_response())
}

/// Records metrics, logs the request, and adds security headers.
async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // the route template, not the raw path, keeps metric cardinality bounded
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    s.metrics
        .observe_request(method.as_str(), &route, status, elapsed);
    tracing::info!(%method, path, status, ms = elapsed.as_secs_f64() * 1e3, "request");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
