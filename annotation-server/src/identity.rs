//! Who a request acts for: [`CurrentUser`] and its role checks. Below both
//! [`crate::auth`] (which finds the user) and [`crate::state`] (whose token
//! cache keeps it), so that neither of those depends on the other's types.
use crate::api::Role;
use crate::entities::users;
use crate::error::{AppError, AppResult};

/// The user behind a request.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    /// The user's id.
    pub id: i64,
    /// The login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
}

impl CurrentUser {
    /// The user of a `users` row (500 if its role is unknown).
    pub fn from_model(u: users::Model) -> AppResult<CurrentUser> {
        let role = Role::parse(&u.role)
            .ok_or_else(|| AppError::Internal(format!("user {} has unknown role", u.id)))?;
        Ok(CurrentUser {
            id: u.id,
            username: u.username,
            role,
        })
    }

    /// Fails with 403 unless the user is a researcher or admin.
    pub fn require_researcher(&self) -> AppResult<()> {
        if self.role.is_researcher() {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "this needs the researcher or admin role".into(),
            ))
        }
    }

    /// Fails with 403 unless the user is an admin.
    pub fn require_admin(&self) -> AppResult<()> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::Forbidden("this needs the admin role".into()))
        }
    }

    /// Fails with 403 unless the user may label (labelers; researchers and admins may too).
    pub fn require_labeler(&self) -> AppResult<()> {
        Ok(())
    }
}
