//! Sign-up, login, token refresh, logout and the own account.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Body, load_account};
use crate::domain::account::{
    self, Account, Role, check_display_name, check_password, normalize_username,
};
use crate::domain::device::{Device, DeviceKind, check_label};
use crate::domain::ids::{DeviceId, now_ms};
use crate::services::auth::{LimitError, new_refresh_token, refresh_hash};
use crate::services::push::SignOutReason;
use crate::services::store::{RefreshOutcome, StoreError};
use crate::services::token::AccessClaims;
use crate::transports::auth::{Authed, bearer};
use crate::transports::error::ApiError;
use crate::transports::http::client_addr::ClientAddr;
use crate::transports::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    display_name: Option<String>,
}

/// `POST /api/v1/accounts`: sign up; or, with an admin's access token, an
/// admin creates an account (also while sign-up is closed, and without the
/// per-address sign-up limit).
pub(crate) async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Body(b): Body<RegisterBody>,
) -> Result<Response, ApiError> {
    let by_admin = if headers.contains_key(header::AUTHORIZATION) {
        let claims = state.authenticate(bearer(&headers)?).await?;
        Authed(claims).require(account::PERM_ACCOUNTS_ADMIN)?;
        true
    } else {
        false
    };
    if !by_admin && !state.config.auth.allow_registration {
        return Err(ApiError::forbidden("sign-up is closed on this server"));
    }
    let username = normalize_username("username", &b.username)?;
    check_password("password", &b.password)?;
    let display_name = match b.display_name.as_deref() {
        Some(d) => check_display_name("display_name", d)?,
        None => username.clone(),
    };
    // Admin rights are never taken by signing up (`vela admin grant`).
    let roles = [Role::User];
    let slot = state.hasher.reserve()?;
    // Counted before the password is hashed: that is the work to bound.
    if !by_admin && let Err(e) = state.signup_limiter.admit(addr).await {
        if matches!(e, LimitError::TooMany(_)) {
            tracing::warn!(%addr, "sign-ups from this address over the limit");
        }
        return Err(e.into());
    }
    let hash = slot.hash(b.password).await?;
    let account = match state
        .store
        .create_account(&username, &display_name, &hash, &roles, now_ms())
        .await
    {
        Ok(a) => a,
        Err(StoreError::Conflict) => {
            let mut e = ApiError::conflict("username: is taken");
            e.field = Some("username".into());
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(account = %account.id, username = %account.username, "account created");
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceBody {
    kind: DeviceKind,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    username: String,
    password: String,
    device: DeviceBody,
}

/// What login and refresh return.
#[derive(Serialize)]
pub(crate) struct Session {
    access_token: String,
    token_type: &'static str,
    /// Seconds the access token is valid for.
    expires_in: u64,
    refresh_token: String,
    /// Seconds the refresh token is valid for (if unused).
    refresh_expires_in: u64,
    account: Account,
    device: Device,
}

/// Issues an access token and a new refresh token for `device`.
async fn issue_session(
    state: &AppState,
    account: Account,
    device: Device,
) -> Result<Session, ApiError> {
    let ttl = state.config.auth.access_token_ttl_secs;
    let refresh_ttl = state.config.auth.refresh_token_ttl_secs;
    let access_token = access_token(state, &account, device.id)?;
    let (refresh_token, hash) = new_refresh_token()?;
    let refresh_ms = i64::try_from(refresh_ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
    state
        .store
        .insert_refresh_token(device.id, &hash, now_ms().saturating_add(refresh_ms))
        .await?;
    Ok(Session {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token,
        refresh_expires_in: refresh_ttl,
        account,
        device,
    })
}

fn access_token(state: &AppState, account: &Account, device: DeviceId) -> Result<String, ApiError> {
    let claims = AccessClaims {
        iss: String::new(),
        sub: account.id.to_string(),
        typ: String::new(),
        acc: account.id,
        dev: device,
        name: account.username.clone(),
        roles: account
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        perms: account::permissions(&account.roles)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        iat: 0,
        exp: 0,
        nbf: 0,
    };
    Ok(state.keys.issue_access(
        claims,
        Duration::from_secs(state.config.auth.access_token_ttl_secs),
    )?)
}

/// `POST /api/v1/auth/login`: password login; registers a device.
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(b): Body<LoginBody>,
) -> Result<Json<Session>, ApiError> {
    let label = check_label("device.label", &b.device.label)?;
    let username = b.username.trim().to_ascii_lowercase();
    let slot = state.hasher.reserve()?;
    state.login_limiter.attempt(&username, addr).await?;
    let found = state.store.account_by_username(&username).await?;
    let hash = found.as_ref().map(|(_, h)| h.clone());
    if !slot.verify(b.password, hash).await? {
        tracing::warn!(username = %username, %addr, "failed login");
        return Err(ApiError::unauthorized("invalid username or password"));
    }
    drop(slot);
    let Some((account, _)) = found else {
        return Err(ApiError::unauthorized("invalid username or password"));
    };
    if account.disabled {
        return Err(ApiError::forbidden("this account is disabled"));
    }
    state.login_limiter.succeeded(&username, addr).await;
    // With `limits.max_devices_per_account` signed in already, the least
    // recently active ones are signed out (reason `device_limit`), so that
    // logins cannot grow the store without bound and a user who lost a
    // device can always sign in again. One store transaction: logins racing
    // on several nodes never leave more than the limit.
    let max = state.config.limits.max_devices_per_account as usize;
    let (device, signed_out) = state
        .store
        .create_device_within(account.id, b.device.kind, &label, now_ms(), max)
        .await?;
    for d in signed_out {
        tracing::info!(account = %account.id, device = %d, "device limit reached: signed out the least recently active device");
        state
            .devices
            .disconnect(account.id, d, SignOutReason::DeviceLimit);
    }
    tracing::info!(account = %account.id, device = %device.id, kind = device.kind.as_str(), "login");
    Ok(Json(issue_session(&state, account, device).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/v1/auth/refresh`: trades a refresh token for a new access
/// token and a new refresh token. Presenting a used refresh token again
/// signs the device out (the token may have been stolen).
pub(crate) async fn refresh(
    State(state): State<AppState>,
    Body(b): Body<RefreshBody>,
) -> Result<Json<Session>, ApiError> {
    let old = refresh_hash(&b.refresh_token);
    let (new_token, new_hash) = new_refresh_token()?;
    let ttl_ms = i64::try_from(
        state
            .config
            .auth
            .refresh_token_ttl_secs
            .saturating_mul(1000),
    )
    .unwrap_or(i64::MAX);
    let now = now_ms();
    let outcome = state
        .store
        .rotate_refresh_token(&old, &new_hash, now.saturating_add(ttl_ms), now)
        .await?;
    match outcome {
        RefreshOutcome::Rotated { account, device } => {
            let (Some(account), Some(device)) = (
                state.store.account(account).await?,
                state.store.device(account, device).await?,
            ) else {
                return Err(ApiError::unauthorized("invalid or expired refresh token"));
            };
            let access_token = access_token(&state, &account, device.id)?;
            Ok(Json(Session {
                access_token,
                token_type: "Bearer",
                expires_in: state.config.auth.access_token_ttl_secs,
                refresh_token: new_token,
                refresh_expires_in: state.config.auth.refresh_token_ttl_secs,
                account,
                device,
            }))
        }
        RefreshOutcome::Reused { account, device } => {
            tracing::warn!(%account, %device, "refresh token reused: signing the device out");
            state
                .devices
                .revoke(account, device, SignOutReason::RefreshTokenReused)
                .await?;
            Err(ApiError::unauthorized(
                "this refresh token was already used: the device has been signed out",
            ))
        }
        RefreshOutcome::Invalid => Err(ApiError::unauthorized("invalid or expired refresh token")),
    }
}

/// `POST /api/v1/auth/logout`: signs this device out.
pub(crate) async fn logout(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<StatusCode, ApiError> {
    state
        .devices
        .revoke(auth.account(), auth.device(), SignOutReason::LoggedOut)
        .await?;
    tracing::info!(account = %auth.account(), device = %auth.device(), "logout");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/me`.
pub(crate) async fn me(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(load_account(&state, auth.account()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMeBody {
    display_name: String,
}

/// `PATCH /api/v1/me`: changes the display name.
pub(crate) async fn update_me(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<UpdateMeBody>,
) -> Result<Json<Account>, ApiError> {
    let name = check_display_name("display_name", &b.display_name)?;
    state.store.set_display_name(auth.account(), &name).await?;
    Ok(Json(load_account(&state, auth.account()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// `PUT /api/v1/me/password`: changes the password and signs every other
/// device out.
pub(crate) async fn change_password(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    auth: Authed,
    Body(b): Body<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    check_password("new_password", &b.new_password)?;
    let username = auth.0.name.clone();
    let slot = state.hasher.reserve()?;
    state.login_limiter.attempt(&username, addr).await?;
    let hash = state.store.password_hash(auth.account()).await?;
    if !slot.verify(b.current_password, hash).await? {
        let mut e = ApiError::forbidden("current_password: is wrong");
        e.field = Some("current_password".into());
        return Err(e);
    }
    state.login_limiter.succeeded(&username, addr).await;
    let hash = slot.hash(b.new_password).await?;
    state
        .devices
        .set_password_hash(
            auth.account(),
            &hash,
            Some(auth.device()),
            SignOutReason::PasswordChanged,
        )
        .await?;
    tracing::info!(account = %auth.account(), "password changed; other devices signed out");
    Ok(StatusCode::NO_CONTENT)
}
