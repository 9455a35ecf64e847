//! The server-rendered web UI: login, the labeling page, the researcher
//! dashboard. Forms carry the session's CSRF token; no front-end build step.
mod html;
mod rounds;
mod session;

pub use html::{esc, esc_text};
use html::{nav, page};
pub use rounds::{cancel_round, queue_round, round_page, series_plot, summary_plot, QueueForm};
use session::to_login;
pub use session::{Access, Anyone, FormSession, PageSession, ResearcherOnly};

use crate::api::{ExportQuery, Role, Safety, Strength, SubmitLabel, Task};
use crate::assign;
use crate::auth::{
    self, cookie, create_session, delete_session, random_hex, session_from_headers, set_cookie,
    Session, LOGIN_CSRF_COOKIE, SESSION_COOKIE,
};
use crate::entities::users;
use crate::error::AppError;
use crate::progress;
use crate::state::AppState;
use crate::time::{now_ms, start_of_today_ms};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::Form;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::collections::HashMap;
use std::net::SocketAddr;

/// The UI's stylesheet, served at `/static/app.css`.
pub const APP_CSS: &str = include_str!("../../static/app.css");
/// The labeling page's keyboard shortcuts, served at `/static/app.js`.
pub const APP_JS: &str = include_str!("../../static/app.js");

/// An error shown as an HTML page.
pub struct UiError(AppError);

impl From<AppError> for UiError {
    fn from(e: AppError) -> Self {
        UiError(e)
    }
}

impl From<sea_orm::DbErr> for UiError {
    fn from(e: sea_orm::DbErr) -> Self {
        UiError(e.into())
    }
}

impl From<FormRejection> for UiError {
    fn from(r: FormRejection) -> Self {
        UiError(match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType(r.body_text()),
            _ => AppError::BadRequest(r.body_text()),
        })
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, _) = self.0.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "page failed");
        }
        let body = self.0.body();
        let html = page(
            "Error",
            "",
            &format!(
                "<div class=\"error\"><p><strong>{}</strong></p><p>{}</p></div><p><a href=\"/\">Back</a></p>",
                status.as_u16(),
                esc(&body.message)
            ),
        );
        (status, Html(html)).into_response()
    }
}

type UiResult = Result<Response, UiError>;

/// `GET /`: where a user starts.
pub async fn index(State(s): State<AppState>, headers: HeaderMap) -> UiResult {
    Ok(match session_from_headers(&s, &headers).await? {
        Some(sess) if sess.user.role.is_researcher() => Redirect::to("/dashboard").into_response(),
        Some(_) => Redirect::to("/label").into_response(),
        None => to_login(),
    })
}

fn login_page(csrf: &str, error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        "Log in",
        "",
        &format!(
            "<form class=\"login\" method=\"post\" action=\"/login\"><h1>Log in</h1>{err}\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" autofocus required>\
             <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
             <button class=\"primary\" type=\"submit\">Log in</button></form>",
            esc(csrf)
        ),
    )
}

/// `GET /login`: the form, with a fresh login CSRF token (double-submit
/// cookie). The token is always generated here, never taken from the
/// request: a value planted in the browser must not become a valid token.
pub async fn login_form(State(s): State<AppState>) -> Response {
    let token = random_hex();
    (
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_CSRF_COOKIE, &token, 3600, s.config.secure_cookies),
        )],
        Html(login_page(&token, None)),
    )
        .into_response()
}

/// Whether a form POST comes from another site, so that a page elsewhere
/// that planted a login-CSRF cookie (e.g. from a sibling subdomain) still
/// cannot submit it. Browsers say so in `Sec-Fetch-Site`, which no proxy
/// rewrites; older ones only send `Origin`, compared with the host the
/// request was sent to (`X-Forwarded-Host` behind a proxy that rewrites
/// `Host`: a cross-site form cannot set that header).
fn cross_site(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    let Some(origin) = value("origin") else {
        // non-browser clients send no Origin; they cannot be tricked into a POST
        return false;
    };
    // "null" (sandboxed or opaque origins) is never ours
    let authority = origin.split_once("://").map(|(_, a)| a);
    let ours = |h: Option<&str>| h.is_some() && authority == h;
    !(ours(value("host")) || ours(value("x-forwarded-host")))
}

/// A user name as stored in the audit log and used as a rate-limit key: only
/// names that could exist, since a failed login may send megabytes.
fn loggable_username(username: &str) -> &str {
    if crate::accounts::validate_username(username).is_ok() {
        username
    } else {
        "(invalid user name)"
    }
}

/// `POST /login`
pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> UiResult {
    let Form(form) = form?;
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let csrf = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if csrf.is_empty() || !auth::constant_time_eq(csrf, get("csrf")) || cross_site(&headers) {
        return Err(AppError::Forbidden("the login form expired; reload the page".into()).into());
    }
    let username = get("username");
    let account = loggable_username(username);
    let limiter = &s.login_limiter;
    // the attempt counts as a failure from here on, so concurrent requests
    // cannot all pass this check before any of their failures is recorded
    let Some(attempt) = limiter.reserve(account, addr.ip()) else {
        let html = login_page(
            csrf,
            Some("Too many failed logins. Wait a few minutes and try again."),
        );
        return Ok((StatusCode::TOO_MANY_REQUESTS, Html(html)).into_response());
    };
    // a name that cannot exist is not looked up (NUL bytes would upset PostgreSQL)
    let user = if crate::accounts::validate_username(username).is_ok() {
        let found = users::Entity::find()
            .filter(users::Column::Username.eq(username))
            .one(&s.db)
            .await;
        match found {
            Ok(u) => u,
            Err(e) => {
                limiter.cancel(attempt);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let password = get("password").to_string();
    // verify against a dummy hash for unknown users so timing does not reveal them
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_string());
    let Some(ok) = auth::verify_password_bounded(&s, password, hash).await else {
        limiter.cancel(attempt);
        let html = login_page(csrf, Some("The server is busy. Try again in a moment."));
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Html(html),
        )
            .into_response());
    };
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => {
            crate::audit::record(
                &s.db,
                None,
                "login.fail",
                serde_json::json!({"username": account, "ip": addr.ip().to_string()}),
            )
            .await?;
            let html = login_page(csrf, Some("Wrong user name or password."));
            return Ok((StatusCode::UNAUTHORIZED, Html(html)).into_response());
        }
    };
    limiter.succeeded(attempt);
    let token = create_session(&s, user.id).await?;
    crate::audit::record(
        &s.db,
        Some(user.id),
        "login",
        serde_json::json!({"ip": addr.ip().to_string()}),
    )
    .await?;
    let to = if Role::parse(&user.role).is_some_and(Role::is_researcher) {
        "/dashboard"
    } else {
        "/label"
    };
    let max_age = s.config.session_ttl.as_secs() as i64;
    Ok((
        // AppendHeaders: a plain header array would keep only the last Set-Cookie
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, max_age, s.config.secure_cookies),
            ),
            (
                header::SET_COOKIE,
                set_cookie(LOGIN_CSRF_COOKIE, "", 0, s.config.secure_cookies),
            ),
        ]),
        Redirect::to(to),
    )
        .into_response())
}

/// An argon2id hash of a random password, verified for unknown user names.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$J9nqDg5Xr3fU4b9zZ6uQ0o8hJmS0w2bOGM8mPX1oGvI";

/// `POST /logout`
pub async fn logout(State(s): State<AppState>, posted: Option<FormSession>) -> UiResult {
    if let Some(FormSession { session, .. }) = posted {
        delete_session(&s, &session.token_hash).await?;
    }
    Ok((
        [(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", 0, s.config.secure_cookies),
        )],
        Redirect::to("/login"),
    )
        .into_response())
}

fn user_nav(sess: &Session) -> String {
    let links = if sess.user.role.is_researcher() {
        "<a href=\"/label\" style=\"color:#fff\">Label</a><a href=\"/dashboard\" style=\"color:#fff\">Dashboard</a>"
    } else {
        ""
    };
    nav(
        &sess.user.username,
        sess.user.role.as_str(),
        &sess.csrf,
        links,
    )
}

/// `GET /label`: the caller's current or next task.
pub async fn label_page(
    State(s): State<AppState>,
    PageSession { session: sess, .. }: PageSession,
) -> UiResult {
    render_task(&s, &sess, None, StatusCode::OK).await
}

async fn render_task(
    s: &AppState,
    sess: &Session,
    error: Option<&str>,
    status: StatusCode,
) -> UiResult {
    let task = assign::next_task(s, sess.user.id).await?;
    let today = assign::labels_since(&s.db, sess.user.id, start_of_today_ms()).await?;
    let remaining = assign::remaining_for(&s.db, sess.user.id).await?;
    let progress = format!(
        "<p class=\"progress\" id=\"progress\">Done today: <strong id=\"done-today\">{today}</strong> · Remaining: <strong id=\"remaining\">{remaining}</strong></p>"
    );
    let err = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    let body = match task {
        None => format!(
            "{progress}{err}<h1 id=\"no-task\">Nothing to label right now</h1><p>All comparisons available to you are done. <a href=\"/label\">Check again</a></p>"
        ),
        Some(t) => format!("{progress}{err}{}", task_html(&t, &sess.csrf)),
    };
    Ok((status, Html(page("Label", &user_nav(sess), &body))).into_response())
}

fn task_html(t: &Task, csrf: &str) -> String {
    let k = t.responses.len();
    let mut h = String::new();
    h.push_str(&format!(
        "<section id=\"prompt\" data-comparison=\"{}\"><h2>Prompt</h2>",
        t.comparison_id
    ));
    if !t.tags.is_empty() {
        let tags: Vec<String> = t
            .tags
            .iter()
            .map(|x| format!("<bdi>{}</bdi>", esc_text(x)))
            .collect();
        h.push_str(&format!(
            "<p class=\"progress\">Tags: {}</p>",
            tags.join(", ")
        ));
    }
    for m in &t.prompt {
        h.push_str(&format!(
            "<div class=\"turn\"><div class=\"who\">{}</div><pre class=\"text\" dir=\"auto\">{}</pre></div>",
            esc(&m.role),
            esc_text(&m.content)
        ));
    }
    h.push_str("</section>");
    let cid = t.comparison_id;
    h.push_str(&format!(
        "<form id=\"label-form\" method=\"post\" action=\"/label/{cid}\" data-k=\"{k}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"shown_at\" value=\"{}\">",
        esc(csrf),
        now_ms()
    ));
    h.push_str(&format!(
        "<div class=\"responses{}\">",
        if k == 2 { " pair" } else { "" }
    ));
    for r in &t.responses {
        let i = r.position;
        let choose = if k == 2 {
            format!(
                "<label><input type=\"radio\" name=\"best\" value=\"{i}\" required> This one is better <kbd>{}</kbd></label>",
                i + 1
            )
        } else {
            let opts: String = (1..=k)
                .map(|n| format!("<option value=\"{n}\">{n}</option>"))
                .collect();
            format!(
                "<label>Rank <kbd>{}</kbd> <select name=\"rank_{i}\" required><option value=\"\">–</option>{opts}</select></label>",
                i + 1
            )
        };
        h.push_str(&format!(
            "<article class=\"response\" id=\"response-{i}\"><h3>Response {}</h3><pre class=\"text\" dir=\"auto\">{}</pre>{choose}</article>",
            i + 1,
            esc_text(&r.text)
        ));
    }
    h.push_str("</div>");
    let keys = ["q", "w", "e", "r"];
    h.push_str("<fieldset><legend>How much better is the best one?</legend>");
    for (s, key) in Strength::ALL.iter().zip(keys) {
        h.push_str(&format!(
            "<label><input type=\"radio\" name=\"strength\" value=\"{}\" required> {} <kbd>{key}</kbd></label>",
            s.as_str(),
            s.describe()
        ));
    }
    h.push_str("</fieldset><fieldset><legend>Safety (optional)</legend>");
    for (s, key) in Safety::ALL.iter().zip(["z", "x", "c"]) {
        h.push_str(&format!(
            "<label><input type=\"radio\" name=\"safety\" value=\"{}\"> {} <kbd>{key}</kbd></label>",
            s.as_str(),
            s.describe()
        ));
    }
    h.push_str(
        "</fieldset><details><summary>Note / improved response (optional)</summary>\
         <label for=\"note\">Note</label><textarea id=\"note\" name=\"note\"></textarea>\
         <label for=\"edited\">Improved version of the best response</label><textarea id=\"edited\" name=\"edited_response\"></textarea></details>",
    );
    h.push_str(&format!(
        "<div class=\"actions\"><button class=\"primary\" type=\"submit\" id=\"submit\">Submit <kbd>Enter</kbd></button>\
         <button type=\"submit\" form=\"skip-form\" id=\"skip\">Skip <kbd>s</kbd></button>\
         <span class=\"progress\">Pick with {}, strength with <kbd>q</kbd><kbd>w</kbd><kbd>e</kbd><kbd>r</kbd>{}</span></div></form>\
         <form id=\"skip-form\" method=\"post\" action=\"/label/{cid}/skip\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"></form>",
        (1..=k.min(9)).map(|n| format!("<kbd>{n}</kbd>")).collect::<String>(),
        if k > 2 { " (press numbers best first; <kbd>Backspace</kbd> resets)" } else { "" },
        esc(csrf)
    ));
    h
}

/// Turns the label form into an API label.
fn label_from_form(form: &HashMap<String, String>, k: usize) -> Result<SubmitLabel, String> {
    let get = |key: &str| form.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let ranking: Vec<u32> = if let Some(best) = get("best") {
        let b: usize = best.parse().map_err(|_| "invalid choice".to_string())?;
        if b >= k {
            return Err("invalid choice".into());
        }
        (0..k).map(|i| if i == b { 1 } else { 2 }).collect()
    } else {
        (0..k)
            .map(|i| {
                get(&format!("rank_{i}"))
                    .ok_or_else(|| {
                        "Pick the better response (or rank every response).".to_string()
                    })?
                    .parse::<u32>()
                    .map_err(|_| "invalid rank".to_string())
            })
            .collect::<Result<_, _>>()?
    };
    let strength = get("strength")
        .ok_or_else(|| "Choose how much better it is.".to_string())
        .and_then(|v| Strength::parse(v).ok_or_else(|| "invalid strength".to_string()))?;
    let safety = match get("safety") {
        Some(v) => Some(Safety::parse(v).ok_or_else(|| "invalid safety label".to_string())?),
        None => None,
    };
    let time_spent_ms = get("shown_at")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|t| (now_ms() - t).clamp(0, 24 * 3600 * 1000) as u64);
    Ok(SubmitLabel {
        ranking,
        strength,
        safety,
        edited_response: get("edited_response").map(str::to_string),
        note: get("note").map(str::to_string),
        time_spent_ms,
    })
}

/// `POST /label/{id}`: stores the label and shows the next task at once.
pub async fn submit(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    FormSession {
        session: sess,
        form,
        ..
    }: FormSession,
) -> UiResult {
    let k = assign::response_count(&s, id).await?;
    let label = match label_from_form(&form, k) {
        Ok(l) => l,
        Err(msg) => {
            return render_task(&s, &sess, Some(&msg), StatusCode::UNPROCESSABLE_ENTITY).await
        }
    };
    match assign::submit_label(&s, sess.user.id, id, label).await {
        Ok(_) => Ok(Redirect::to("/label").into_response()),
        Err(e @ (AppError::Conflict(_) | AppError::Unprocessable(_))) => {
            render_task(&s, &sess, Some(&e.to_string()), StatusCode::OK).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /label/{id}/skip`
pub async fn skip(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    FormSession { session: sess, .. }: FormSession,
) -> UiResult {
    assign::skip(&s, sess.user.id, id).await?;
    Ok(Redirect::to("/label").into_response())
}

/// `GET /dashboard`: progress per batch and the rounds (researchers and admins).
pub async fn dashboard(
    State(s): State<AppState>,
    PageSession { session: sess, .. }: PageSession<ResearcherOnly>,
) -> UiResult {
    render_dashboard(&s, &sess, &QueueForm::default(), None, StatusCode::OK).await
}

/// The dashboard page, with the queue form's values and error (if any).
async fn render_dashboard(
    s: &AppState,
    sess: &Session,
    form: &QueueForm,
    error: Option<&str>,
    status: StatusCode,
) -> UiResult {
    let batches = progress::batches_progress(&s.db, None).await?;
    let mut rows = String::new();
    for b in &batches {
        let labelers: Vec<String> = b
            .labelers
            .iter()
            .map(|l| format!("{} ({})", esc(&l.username), l.labels))
            .collect();
        let pct = if b.comparisons == 0 {
            0.0
        } else {
            100.0 * b.complete as f64 / b.comparisons as f64
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {} ({pct:.0}%)</td><td>{}</td><td>{}</td>\
             <td><a href=\"/dashboard/export?format=trl&amp;batch_id={id}\">TRL</a> · <a href=\"/dashboard/export?format=hh&amp;batch_id={id}\">HH</a> · \
             <a href=\"/dashboard/export?format=raw&amp;batch_id={id}\">raw</a> · <a href=\"/dashboard/batches/{id}/agreement\">agreement</a></td></tr>",
            b.batch_id,
            esc(&b.name),
            b.round_id.map(|r| r.to_string()).unwrap_or_default(),
            b.labels_wanted,
            b.complete,
            b.comparisons,
            b.labels,
            labelers.join(", "),
            id = b.batch_id
        ));
    }
    let body = format!(
        "<h1>Batches</h1><table id=\"batches\"><thead><tr><th>id</th><th>name</th><th>round</th><th>labels wanted</th>\
         <th>complete</th><th>labels</th><th>labelers</th><th>export</th></tr></thead><tbody>{rows}</tbody></table>\
         <p>API: <a href=\"/api/openapi.json\">OpenAPI document</a> (bearer tokens: <code>rlhf token create</code>)</p>{}",
        rounds::section(&crate::rounds::list(&s.db).await?, &sess.csrf, form, error)
    );
    Ok((status, Html(page("Dashboard", &user_nav(sess), &body))).into_response())
}

/// `GET /dashboard/export`: the export (same query as `GET /api/export`) for
/// a logged-in researcher. The API takes bearer tokens only; this read-only
/// page is how the dashboard's links download with the session cookie.
pub async fn export(
    State(s): State<AppState>,
    PageSession { session: sess, .. }: PageSession,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> UiResult {
    let Query(q) = query.map_err(|r| AppError::BadRequest(r.body_text()))?;
    Ok(crate::routes::api::export_response(&s, &sess.user, &q).await?)
}

/// `GET /dashboard/batches/{id}/agreement`: a batch's agreement (JSON) for a
/// logged-in researcher (see [`export`] for why not the API route).
pub async fn agreement(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    _: PageSession<ResearcherOnly>,
) -> UiResult {
    Ok(axum::Json(progress::batch_agreement(&s.db, id).await?).into_response())
}
