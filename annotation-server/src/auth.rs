//! Credentials: argon2 password hashes, hashed API tokens and browser
//! sessions, and the extractors that authenticate requests.
use crate::entities::{api_tokens, sessions, users};
use crate::error::{AppError, AppResult};
use crate::identity::CurrentUser;
use crate::state::{AppState, CachedToken};
use crate::time::now_ms;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rlhf_session";
/// Name of the cookie that carries the login form's CSRF token before a session exists.
pub const LOGIN_CSRF_COOKIE: &str = "rlhf_login_csrf";
/// Prefix of API tokens, so that leaked tokens are recognizable.
pub const TOKEN_PREFIX: &str = "rlhf_";

/// Hashes a password with argon2id (random salt, PHC string).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// Checks a password against a stored hash; any malformed hash is a mismatch.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// [`verify_password`] off the async workers, at most
/// `Config::max_concurrent_hashes` at once: each argon2 run takes 19 MiB, so
/// unbounded concurrent logins could exhaust memory. `None` (answer 503) when
/// every slot is busy; callers do not queue, so an attacker cannot pile up work.
pub async fn verify_password_bounded(
    state: &AppState,
    password: String,
    hash: String,
) -> Option<bool> {
    let permit = state.hash_slots.clone().try_acquire_owned().ok()?;
    let ok = tokio::task::spawn_blocking(move || {
        let ok = verify_password(&password, &hash);
        release_freed_memory();
        drop(permit);
        ok
    })
    .await
    .unwrap_or(false);
    Some(ok)
}

/// Hands freed heap memory back to the OS. glibc keeps a freed argon2 block
/// (19 MiB, above its adaptive mmap threshold) in the thread's arena, so
/// without this the server's memory stays at its peak after a burst of logins.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A fresh 256-bit random value, hex-encoded.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// A new API token (`rlhf_` + 64 hex digits).
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// SHA-256 (hex) of a token or session id. These are 256-bit random values,
/// so a fast hash suffices: only the hash is stored, never the secret.
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A request authenticated with `Authorization: Bearer <token>`.
#[derive(Clone, Debug)]
pub struct ApiUser(pub CurrentUser);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<ApiUser> {
        // bearer tokens only: a browser attaches cookies to cross-site requests
        // by itself, never an Authorization header, so no API call can be forged
        bearer_user(state, &parts.headers).await.map(ApiUser)
    }
}

/// The owner of the request's bearer token (401 without a valid one).
pub async fn bearer_user(state: &AppState, headers: &HeaderMap) -> AppResult<CurrentUser> {
    match bearer_token(headers) {
        Some(token) => user_for_token(state, token).await,
        None => Err(AppError::Unauthorized),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// How often (ms) a token's `last_used_at` is written: at most once a minute,
/// so that authentication does not add a write to every request.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// Looks up the (enabled) owner of an unexpired API token, and notes its use.
pub async fn user_for_token(state: &AppState, token: &str) -> AppResult<CurrentUser> {
    let hash = sha256_hex(token);
    let now = now_ms();
    let generation = state.token_cache.generation();
    let entry = match state.token_cache.get(&hash) {
        Some(e) => e,
        None => {
            let found = api_tokens::Entity::find()
                .filter(api_tokens::Column::TokenHash.eq(hash.clone()))
                .find_also_related(users::Entity)
                .one(&state.db)
                .await?;
            match found {
                Some((t, Some(u))) if !u.disabled => CachedToken {
                    user: CurrentUser::from_model(u)?,
                    token_id: t.id,
                    expires_at: t.expires_at,
                    last_used_at: t.last_used_at,
                },
                _ => return Err(AppError::Unauthorized),
            }
        }
    };
    if entry.expires_at.is_some_and(|e| e <= now) {
        return Err(AppError::Unauthorized);
    }
    let user = entry.user.clone();
    let mut entry = entry;
    if entry
        .last_used_at
        .is_none_or(|t| now - t >= LAST_USED_EVERY_MS)
    {
        entry.last_used_at = Some(now);
        // written in the background: the request does not wait for it
        let db = state.db.clone();
        let id = entry.token_id;
        tokio::spawn(async move {
            if let Err(e) = note_token_use(&db, id, now).await {
                tracing::warn!(error = %e, "recording a token's last use failed");
            }
        });
    }
    state.token_cache.put(hash, entry, generation);
    Ok(user)
}

/// Sets `last_used_at` unless another request did within the last minute.
async fn note_token_use(
    db: &sea_orm::DatabaseConnection,
    id: i64,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    let (_writer, txn) = crate::db::begin_write(db).await?;
    api_tokens::Entity::update_many()
        .col_expr(
            api_tokens::Column::LastUsedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(api_tokens::Column::Id.eq(id))
        .filter(
            sea_orm::Condition::any()
                .add(api_tokens::Column::LastUsedAt.is_null())
                .add(api_tokens::Column::LastUsedAt.lt(now - LAST_USED_EVERY_MS)),
        )
        .exec(&txn)
        .await?;
    txn.commit().await
}

/// Reads one cookie from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax (so the top-level GET after a
/// redirect carries it; forms are CSRF-protected), Secure when configured.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}")
}

/// A browser session: the user and the CSRF token their forms must carry.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who is logged in.
    pub user: CurrentUser,
    /// The session's CSRF token.
    pub csrf: String,
    /// Hash of the session cookie (its row key).
    pub token_hash: String,
}

impl Session {
    /// Fails with 403 unless `submitted` is this session's CSRF token.
    pub fn check_csrf(&self, submitted: &str) -> AppResult<()> {
        if constant_time_eq(&self.csrf, submitted) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "invalid or missing CSRF token; reload the page".into(),
            ))
        }
    }
}

/// Looks up the session a request's cookie names, if it is valid.
pub async fn session_from_headers(
    state: &AppState,
    headers: &HeaderMap,
) -> AppResult<Option<Session>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let token_hash = sha256_hex(token);
    let found = sessions::Entity::find()
        .filter(sessions::Column::TokenHash.eq(token_hash.clone()))
        .filter(sessions::Column::ExpiresAt.gt(now_ms()))
        .find_also_related(users::Entity)
        .one(&state.db)
        .await?;
    match found {
        Some((s, Some(u))) if !u.disabled => Ok(Some(Session {
            user: CurrentUser::from_model(u)?,
            csrf: s.csrf_token,
            token_hash,
        })),
        _ => Ok(None),
    }
}

/// Creates a session for a user; returns the cookie value (the secret).
pub async fn create_session(state: &AppState, user_id: i64) -> AppResult<String> {
    let token = random_hex();
    let now = now_ms();
    sessions::ActiveModel {
        token_hash: Set(sha256_hex(&token)),
        user_id: Set(user_id),
        csrf_token: Set(random_hex()),
        expires_at: Set(now + state.config.session_ttl.as_millis() as i64),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&state.db)
    .await?;
    Ok(token)
}

/// Deletes a session (logout).
pub async fn delete_session(state: &AppState, token_hash: &str) -> AppResult<()> {
    sessions::Entity::delete_many()
        .filter(sessions::Column::TokenHash.eq(token_hash))
        .exec(&state.db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(a, new_token());
        assert_eq!(sha256_hex("abc").len(), 64);
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd"));
    }

    #[test]
    fn cookies_are_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; rlhf_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
