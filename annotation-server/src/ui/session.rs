//! The preamble of every page and form of the UI, as extractors: find the
//! session the cookie names (none: a redirect to `/login`), check the role,
//! and for a form POST read the fields and compare the CSRF field with the
//! session's token (403 when it differs).
use super::UiError;
use crate::auth::{session_from_headers, Session};
use crate::error::{AppError, AppResult};
use crate::identity::CurrentUser;
use crate::state::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use std::collections::HashMap;
use std::marker::PhantomData;

/// Who may use a page: checked right after the session is found.
pub trait Access: Send + Sync {
    /// `Ok` when `user` may.
    fn check(user: &CurrentUser) -> AppResult<()>;
}

/// Any logged-in user (labelers, researchers and admins).
pub struct Anyone;

impl Access for Anyone {
    fn check(_: &CurrentUser) -> AppResult<()> {
        Ok(())
    }
}

/// Researchers and admins (403 for labelers).
pub struct ResearcherOnly;

impl Access for ResearcherOnly {
    fn check(user: &CurrentUser) -> AppResult<()> {
        user.require_researcher()
    }
}

/// Where a request without a (valid) session goes.
pub fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// Why a page or form extractor turned a request away.
pub enum Rejected {
    /// No valid session: redirected to the login page.
    NoSession,
    /// A 4xx/5xx error page (wrong role, bad CSRF token, unreadable form ...).
    Page(UiError),
}

impl From<AppError> for Rejected {
    fn from(e: AppError) -> Self {
        Rejected::Page(e.into())
    }
}

impl From<FormRejection> for Rejected {
    fn from(r: FormRejection) -> Self {
        Rejected::Page(r.into())
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        match self {
            Rejected::NoSession => to_login(),
            Rejected::Page(e) => e.into_response(),
        }
    }
}

/// The session of a page request by a user that `A` admits.
pub struct PageSession<A = Anyone> {
    /// The requester's session.
    pub session: Session,
    access: PhantomData<A>,
}

impl<A: Access> FromRequestParts<AppState> for PageSession<A> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Rejected> {
        let session = session_from_headers(s, &parts.headers)
            .await?
            .ok_or(Rejected::NoSession)?;
        A::check(&session.user)?;
        Ok(PageSession {
            session,
            access: PhantomData,
        })
    }
}

/// A form POST by a user that `A` admits, its CSRF field checked.
pub struct FormSession<A = Anyone> {
    /// The poster's session.
    pub session: Session,
    /// The form's fields (the `csrf` one included).
    pub form: HashMap<String, String>,
    access: PhantomData<A>,
}

impl<A: Access> FromRequest<AppState> for FormSession<A> {
    type Rejection = Rejected;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, Rejected> {
        let (mut parts, body) = req.into_parts();
        let PageSession { session, .. } =
            PageSession::<A>::from_request_parts(&mut parts, s).await?;
        let Form(form) = Form::from_request(Request::from_parts(parts, body), s).await?;
        checked(session, form)
    }
}

/// For `POST /logout`: without a session there is nothing to check (nor to
/// end), so `None`; the form is read first, as it always was.
impl OptionalFromRequest<AppState> for FormSession<Anyone> {
    type Rejection = Rejected;

    async fn from_request(req: Request, s: &AppState) -> Result<Option<Self>, Rejected> {
        let headers = req.headers().clone();
        let Form(form) = Form::from_request(req, s).await?;
        match session_from_headers(s, &headers).await? {
            Some(session) => checked(session, form).map(Some),
            None => Ok(None),
        }
    }
}

/// The form of `session`, if its `csrf` field is the session's token (403 otherwise).
fn checked<A>(session: Session, form: HashMap<String, String>) -> Result<FormSession<A>, Rejected> {
    let submitted = form.get("csrf").map(String::as_str).unwrap_or("");
    session.check_csrf(submitted)?;
    Ok(FormSession {
        session,
        form,
        access: PhantomData,
    })
}
