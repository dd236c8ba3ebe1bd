//! A user's devices: list, rename, revoke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::Body;
use crate::domain::device::{Device, check_label};
use crate::domain::ids::DeviceId;
use crate::domain::presence::Status;
use crate::services::push::SignOutReason;
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

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
    let connected = state.hub.connected_devices(auth.account()).await?;
    let statuses = state
        .presence
        .device_statuses(auth.account(), devices.iter().map(|d| d.id).collect())
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
    if state
        .devices
        .revoke(auth.account(), id, SignOutReason::Revoked)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such device"))
    }
}
