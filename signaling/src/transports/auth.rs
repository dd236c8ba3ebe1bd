//! Checking account access tokens against the store: `authenticate`, the
//! `Authorization: Bearer` header and the `Authed` extractor.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::domain::account;
use crate::domain::ids::{AccountId, DeviceId};
use crate::services::store::SessionState;
use crate::services::token::AccessClaims;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

impl AppState {
    /// Verifies an account access token and that its device is not revoked
    /// and its account not disabled (the store is asked every time). The
    /// roles and permissions are the account's now, not the token's: a
    /// role granted or taken away counts from the next request.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let mut claims = self.keys.verify_access(token)?;
        let (session, roles) = self.store.session(claims.acc, claims.dev).await?;
        match session {
            SessionState::Active => {
                claims.perms = account::permissions(&roles)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                claims.roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
                Ok(claims)
            }
            SessionState::Revoked => Err(ApiError::unauthorized("this device was signed out")),
            SessionState::Disabled => Err(ApiError::unauthorized("this account is disabled")),
            SessionState::Unknown => Err(ApiError::unauthorized("unknown account or device")),
        }
    }
}

/// The `Authorization: Bearer` value of a request.
pub fn bearer(parts: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let v = parts
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be a Bearer token"))
}

/// A request authenticated with a live account access token.
#[derive(Debug, Clone)]
pub struct Authed(pub AccessClaims);

impl Authed {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.0.acc
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.0.dev
    }

    /// 403 unless the token carries `perm`.
    pub fn require(&self, perm: &str) -> Result<(), ApiError> {
        if self.0.has(perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("needs the {perm} permission")))
        }
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        Ok(Authed(state.authenticate(token).await?))
    }
}
