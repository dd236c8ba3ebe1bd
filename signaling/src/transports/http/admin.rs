//! Account administration (admin role only).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Body, load_account};
use crate::domain::account::{Account, PERM_ACCOUNTS_ADMIN, check_password};
use crate::domain::ids::AccountId;
use crate::services::hub::CLOSE_DISABLED;
use crate::services::push::{Push, SignOutReason};
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/v1/admin/accounts?after=&limit=`: accounts by id.
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Authed,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.require(PERM_ACCOUNTS_ADMIN)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let accounts = state
        .store
        .list_accounts(q.after.unwrap_or(0), limit)
        .await?;
    let next = (accounts.len() as i64 == limit)
        .then(|| accounts.last().map(|a| a.id))
        .flatten();
    Ok(Json(
        serde_json::json!({ "accounts": accounts, "next_after": next }),
    ))
}

fn account_id(raw: &str) -> Result<AccountId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("no such account"))
}

/// `POST /api/v1/admin/accounts/{id}/disable`: the account's tokens stop
/// working and its connections close at once.
pub(crate) async fn disable(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    auth.require(PERM_ACCOUNTS_ADMIN)?;
    let id = account_id(&id)?;
    if id == auth.account() {
        return Err(ApiError::bad_request(
            "an admin cannot disable their own account",
        ));
    }
    if !state.store.set_disabled(id, true).await? {
        return Err(ApiError::not_found("no such account"));
    }
    let n = state.hub.close_account(
        id,
        Some(&Push::AccountDisabled),
        CLOSE_DISABLED,
        "account disabled",
    );
    state.presence.account_removed(id);
    tracing::info!(account = %id, by = %auth.account(), connections = n, "account disabled");
    Ok(Json(load_account(&state, id).await?))
}

/// `POST /api/v1/admin/accounts/{id}/enable`.
pub(crate) async fn enable(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    auth.require(PERM_ACCOUNTS_ADMIN)?;
    let id = account_id(&id)?;
    if !state.store.set_disabled(id, false).await? {
        return Err(ApiError::not_found("no such account"));
    }
    tracing::info!(account = %id, by = %auth.account(), "account enabled");
    Ok(Json(load_account(&state, id).await?))
}

/// The body of `PUT /api/v1/admin/accounts/{id}/password`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetBody {
    new_password: String,
}

/// `PUT /api/v1/admin/accounts/{id}/password`: sets a forgotten password
/// (there is no e-mail to reset it by) and signs every device of the
/// account out, so that only the new password gets in.
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    Body(b): Body<ResetBody>,
) -> Result<StatusCode, ApiError> {
    auth.require(PERM_ACCOUNTS_ADMIN)?;
    let id = account_id(&id)?;
    load_account(&state, id).await?;
    check_password("new_password", &b.new_password)?;
    let slot = state.hasher.reserve()?;
    let hash = slot.hash(b.new_password).await?;
    let devices = state
        .devices
        .set_password_hash(id, &hash, None, SignOutReason::PasswordReset)
        .await?;
    tracing::info!(account = %id, by = %auth.account(), devices, "password reset; every device signed out");
    Ok(StatusCode::NO_CONTENT)
}
