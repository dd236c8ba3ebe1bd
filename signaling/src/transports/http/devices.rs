//! A user's devices: list, rename, revoke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::Body;
use crate::domain::device::{Device, check_label};
use crate::domain::ids::{AccountId, DeviceId, now_ms};
use crate::domain::presence::Status;
use crate::services::push::{Push, SignOutReason};
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

use crate::services::hub::CLOSE_REVOKED;

/// Closes every live connection of `device` (after a `session_revoked`
/// push) and takes it out of presence. The store is already updated.
pub(crate) fn disconnect_device(
    state: &AppState,
    account: AccountId,
    device: DeviceId,
    reason: SignOutReason,
) {
    let event = Push::SessionRevoked {
        device_id: device,
        reason,
    };
    let n = state.hub.close_device(
        account,
        device,
        Some(&event),
        CLOSE_REVOKED,
        "session revoked",
    );
    state.presence.device_removed(device);
    tracing::info!(%account, %device, %reason, connections = n, "device signed out");
}

/// Revokes `device` in the store and disconnects it; `false` when there was
/// no such live device.
pub(crate) async fn revoke_device(
    state: &AppState,
    account: AccountId,
    device: DeviceId,
    reason: SignOutReason,
) -> Result<bool, ApiError> {
    let found = state.store.revoke_device(account, device, now_ms()).await?;
    if found {
        disconnect_device(state, account, device, reason);
    }
    Ok(found)
}

/// Signs out, as `DELETE /devices/{id}` would (reason `session_expired`),
/// every device whose session ran out: no refresh token left to use and
/// its last access token expired. Then drops expired refresh tokens.
/// Returns the devices signed out.
pub(crate) async fn sign_out_expired(state: &AppState, now: i64) -> Result<usize, ApiError> {
    let access_ms = i64::try_from(state.config.auth.access_token_ttl_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    // A minute more: a new device gets its first refresh token just after it
    // is created.
    let idle_before = now.saturating_sub(access_ms).saturating_sub(60_000);
    let expired = state.store.expired_devices(now, idle_before).await?;
    for (account, device) in &expired {
        tracing::info!(%account, %device, "session expired: device signed out");
        revoke_device(state, *account, *device, SignOutReason::SessionExpired).await?;
    }
    state.store.delete_expired_refresh_tokens(now).await?;
    Ok(expired.len())
}

#[derive(Serialize)]
pub(crate) struct DeviceView {
    #[serde(flatten)]
    device: Device,
    /// The device making the request.
    current: bool,
    /// Has a device socket open now.
    connected: bool,
    /// Its own presence status.
    status: Status,
}

/// `GET /api/v1/devices`: the account's signed-in devices.
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let devices = state.store.devices(auth.account()).await?;
    let connected = state.hub.connected_devices(auth.account());
    let statuses = state
        .presence
        .device_statuses(devices.iter().map(|d| d.id).collect())
        .await;
    let views: Vec<DeviceView> = devices
        .into_iter()
        .zip(statuses)
        .map(|(device, status)| DeviceView {
            current: device.id == auth.device(),
            connected: connected.contains(&device.id),
            status,
            device,
        })
        .collect();
    Ok(Json(serde_json::json!({ "devices": views })))
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("no such device"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameBody {
    label: String,
}

/// `PATCH /api/v1/devices/{id}`: renames a device.
pub(crate) async fn rename(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    Body(b): Body<RenameBody>,
) -> Result<Json<Device>, ApiError> {
    let id = device_id(&id)?;
    let label = check_label("label", &b.label)?;
    state
        .store
        .rename_device(auth.account(), id, &label)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such device"))
}

/// `DELETE /api/v1/devices/{id}`: signs a device out; its connections close at once.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = device_id(&id)?;
    if revoke_device(&state, auth.account(), id, SignOutReason::Revoked).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such device"))
    }
}
