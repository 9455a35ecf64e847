//! The error type of every handler: a status code and a JSON [`ErrorBody`].
use crate::api::ErrorBody;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failed request. Client mistakes map to 4xx with a message that says what
/// to fix; only genuine server faults become 500 (and are logged).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but semantically invalid input (422).
    #[error("{0}")]
    Unprocessable(String),
    /// No or bad credentials (401).
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated, but the role does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Body over the size limit (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// Wrong content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Rate limited (429).
    #[error("too many requests; try again later")]
    TooManyRequests,
    /// A database fault.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// Any other server fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of a handler.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// Status code and machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            AppError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            AppError::Db(_) | AppError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let message = match self {
            // never leak database details to clients
            AppError::Db(_) | AppError::Internal(_) => "internal server error".to_string(),
            e => e.to_string(),
        };
        ErrorBody {
            error: code.to_string(),
            message,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (status, Json(self.body())).into_response();
        if matches!(self, AppError::Unauthorized) {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Whether a database error is a unique-constraint violation (portable check).
pub fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Rejects text containing NUL characters (422): PostgreSQL cannot store them
/// in text columns, and no prompt, response or name needs one.
pub fn reject_nul(s: &str, what: &str) -> AppResult<()> {
    if s.contains('\0') {
        Err(AppError::Unprocessable(format!(
            "{what} contains a NUL character"
        )))
    } else {
        Ok(())
    }
}
