//! Account management shared by the CLI and the admin API: users, tokens, and
//! the first admin created on first start.
use crate::api::{Role, TokenCreated, TokenInfo, UserInfo};
use crate::audit;
use crate::auth::{hash_password, new_token, sha256_hex};
use crate::entities::{api_tokens, users};
use crate::error::{is_unique_violation, reject_nul, AppError, AppResult};
use crate::time::{now_ms, rfc3339};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Set,
};

/// Checks a user name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn validate_username(name: &str) -> AppResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest(
            "username must be 1-64 characters of letters, digits, '_', '.', '-'".into(),
        ))
    }
}

/// Checks a password: 8–1024 characters.
pub fn validate_password(pw: &str) -> AppResult<()> {
    if pw.chars().count() < 8 {
        return Err(AppError::BadRequest(
            "password must have at least 8 characters".into(),
        ));
    }
    if pw.len() > 1024 {
        return Err(AppError::BadRequest(
            "password must have at most 1024 bytes".into(),
        ));
    }
    Ok(())
}

/// The API view of a user row.
pub fn user_info(u: &users::Model) -> UserInfo {
    UserInfo {
        id: u.id,
        username: u.username.clone(),
        role: Role::parse(&u.role).unwrap_or(Role::Labeler),
        disabled: u.disabled,
        created_at: rfc3339(u.created_at),
    }
}

/// Creates a user (409 if the name is taken). `actor` is recorded in the audit log.
pub async fn create_user(
    db: &DatabaseConnection,
    username: &str,
    password: &str,
    role: Role,
    actor: Option<i64>,
) -> AppResult<UserInfo> {
    validate_username(username)?;
    validate_password(password)?;
    let pw = password.to_string();
    // argon2 is deliberately slow: keep it off the async workers
    let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let model = users::ActiveModel {
        username: Set(username.to_string()),
        role: Set(role.as_str().to_string()),
        password_hash: Set(hash),
        disabled: Set(false),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(db)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            AppError::Conflict(format!("user {username:?} already exists"))
        } else {
            e.into()
        }
    })?;
    audit::record(
        db,
        actor,
        "user.create",
        serde_json::json!({"username": username, "role": role}),
    )
    .await?;
    Ok(user_info(&model))
}

/// Finds a user by name.
pub async fn find_user<C: ConnectionTrait>(db: &C, username: &str) -> AppResult<users::Model> {
    // names that cannot exist are not looked up (and never reach the database)
    if validate_username(username).is_err() {
        return Err(AppError::NotFound(format!("no user {username:?}")));
    }
    users::Entity::find()
        .filter(users::Column::Username.eq(username))
        .one(db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no user {username:?}")))
}

/// All users, by id.
pub async fn list_users(db: &DatabaseConnection) -> AppResult<Vec<UserInfo>> {
    let all = users::Entity::find()
        .order_by_asc(users::Column::Id)
        .all(db)
        .await?;
    Ok(all.iter().map(user_info).collect())
}

/// Disables a user: they can no longer log in, and their sessions and tokens stop working.
pub async fn disable_user(
    db: &DatabaseConnection,
    username: &str,
    actor: Option<i64>,
) -> AppResult<UserInfo> {
    let u = find_user(db, username).await?;
    let mut am: users::ActiveModel = u.into();
    am.disabled = Set(true);
    let u = am.update(db).await?;
    notify_auth_change(db).await?;
    audit::record(
        db,
        actor,
        "user.disable",
        serde_json::json!({"username": username}),
    )
    .await?;
    Ok(user_info(&u))
}

/// Creates an API token for a user and returns it (it is stored only hashed).
pub async fn create_token(
    db: &DatabaseConnection,
    username: &str,
    name: Option<&str>,
    actor: Option<i64>,
) -> AppResult<String> {
    Ok(create_token_expiring(db, username, name, None, actor)
        .await?
        .token)
}

/// Longest token lifetime that may be asked for (days).
pub const MAX_TOKEN_DAYS: u32 = 3650;

/// Creates an API token that stops working `expires_in_days` after now
/// (`None`: never); the secret is returned once and stored only hashed.
pub async fn create_token_expiring(
    db: &DatabaseConnection,
    username: &str,
    name: Option<&str>,
    expires_in_days: Option<u32>,
    actor: Option<i64>,
) -> AppResult<TokenCreated> {
    let u = find_user(db, username).await?;
    if u.disabled {
        return Err(AppError::Conflict(format!("user {username:?} is disabled")));
    }
    let name = name.unwrap_or("api");
    reject_nul(name, "token name")?;
    if name.len() > 200 {
        return Err(AppError::BadRequest(
            "token name must have at most 200 bytes".into(),
        ));
    }
    if expires_in_days.is_some_and(|d| d == 0 || d > MAX_TOKEN_DAYS) {
        return Err(AppError::Unprocessable(format!(
            "expires_in_days must be between 1 and {MAX_TOKEN_DAYS}"
        )));
    }
    let now = now_ms();
    let expires_at = expires_in_days.map(|d| now + i64::from(d) * 86_400_000);
    let token = new_token();
    let row = api_tokens::ActiveModel {
        user_id: Set(u.id),
        token_hash: Set(sha256_hex(&token)),
        name: Set(name.to_string()),
        created_at: Set(now),
        last_used_at: Set(None),
        expires_at: Set(expires_at),
        ..Default::default()
    }
    .insert(db)
    .await?;
    audit::record(
        db,
        actor,
        "token.create",
        serde_json::json!({"username": username, "name": name, "id": row.id}),
    )
    .await?;
    Ok(TokenCreated {
        username: username.to_string(),
        token,
        id: row.id,
        expires_at: expires_at.map(rfc3339),
    })
}

/// The tokens of `username` (every user's when `None`), by id.
pub async fn list_tokens(
    db: &DatabaseConnection,
    username: Option<&str>,
) -> AppResult<Vec<TokenInfo>> {
    let mut q = api_tokens::Entity::find()
        .find_also_related(users::Entity)
        .order_by_asc(api_tokens::Column::Id);
    if let Some(name) = username {
        q = q.filter(api_tokens::Column::UserId.eq(find_user(db, name).await?.id));
    }
    Ok(q.all(db)
        .await?
        .into_iter()
        .map(|(t, u)| token_info(&t, u.map(|u| u.username).unwrap_or_default()))
        .collect())
}

fn token_info(t: &api_tokens::Model, username: String) -> TokenInfo {
    TokenInfo {
        id: t.id,
        username,
        name: t.name.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
    }
}

/// Revokes (deletes) token `id` and tells every server to forget it at once.
pub async fn revoke_token(
    db: &DatabaseConnection,
    id: i64,
    actor: Option<i64>,
) -> AppResult<TokenInfo> {
    let Some((t, u)) = api_tokens::Entity::find_by_id(id)
        .find_also_related(users::Entity)
        .one(db)
        .await?
    else {
        return Err(AppError::NotFound(format!("no token {id}")));
    };
    api_tokens::Entity::delete_by_id(id).exec(db).await?;
    notify_auth_change(db).await?;
    let info = token_info(&t, u.map(|u| u.username).unwrap_or_default());
    audit::record(
        db,
        actor,
        "token.revoke",
        serde_json::json!({"id": id, "username": info.username, "name": info.name}),
    )
    .await?;
    Ok(info)
}

/// The PostgreSQL channel on which credential changes are announced.
pub const AUTH_CHANNEL: &str = "rlhf_auth";

/// Tells every server process on this database that credentials changed
/// (a user disabled, a token revoked), so that they drop their token caches.
/// PostgreSQL only: servers on SQLite cache nothing (see `state::TokenCache`).
pub async fn notify_auth_change<C: ConnectionTrait>(db: &C) -> AppResult<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared(&format!("NOTIFY {AUTH_CHANNEL}"))
            .await?;
    }
    Ok(())
}

/// On a database without users, creates the first admin. The name and password
/// come from `RLHF_ADMIN_USERNAME` (default `admin`) and `RLHF_ADMIN_PASSWORD`
/// (default: random). Returns `(username, password if generated)` when it created one.
pub async fn ensure_admin(db: &DatabaseConnection) -> AppResult<Option<(String, Option<String>)>> {
    if users::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    let username = std::env::var("RLHF_ADMIN_USERNAME").unwrap_or_else(|_| "admin".into());
    let (password, generated) = match std::env::var("RLHF_ADMIN_PASSWORD") {
        Ok(p) => (p, false),
        Err(_) => (crate::auth::random_hex()[..24].to_string(), true),
    };
    match create_user(db, &username, &password, Role::Admin, None).await {
        Ok(_) => Ok(Some((username, generated.then_some(password)))),
        // another process created it concurrently: fine
        Err(AppError::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
