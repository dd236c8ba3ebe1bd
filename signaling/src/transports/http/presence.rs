//! Presence over HTTP: one's own and one's mutual contacts'.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::Body;
use crate::domain::account::PERM_CONTACTS;
use crate::domain::ids::AccountId;
use crate::domain::presence::DeviceStatus;
use crate::services::presence::Presence;
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// `GET /api/v1/presence`: own presence and every mutual contact's.
pub(crate) async fn overview(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let me = state.presence.presence(auth.account()).await?;
    let ids = state.store.mutual_ids(auth.account()).await?;
    let contacts = state.presence.presences(&ids).await?;
    Ok(Json(serde_json::json!({ "me": me, "contacts": contacts })))
}

/// `GET /api/v1/presence/{account_id}`: only for oneself and mutual
/// contacts; anyone else is 404, whether or not the account exists.
pub(crate) async fn get_one(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Presence>, ApiError> {
    let hidden = || ApiError::not_found("no such contact");
    let id: AccountId = id.parse().map_err(|_| hidden())?;
    if id != auth.account() && !state.store.is_mutual(auth.account(), id).await? {
        return Err(hidden());
    }
    Ok(Json(state.presence.presence(id).await?))
}

/// The body of `PUT /api/v1/presence` and of the socket's `set_presence`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetPresence {
    /// This device's status.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// The account's status text ("" clears it).
    #[serde(default)]
    pub text: Option<String>,
}

/// Applies a `SetPresence` from `auth`'s device: stores the text, feeds the tracker.
pub(crate) async fn apply(
    state: &AppState,
    auth: &Authed,
    set: SetPresence,
) -> Result<(), ApiError> {
    auth.require(PERM_CONTACTS)?;
    if set.status.is_none() && set.text.is_none() {
        return Err(ApiError::bad_request("give status, text or both"));
    }
    state
        .presence
        .update(
            auth.account(),
            auth.device(),
            set.status,
            set.text.as_deref(),
        )
        .await?;
    Ok(())
}

/// `PUT /api/v1/presence`: sets this device's status and/or the account's
/// status text (also counts as activity of the device).
pub(crate) async fn set(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<SetPresence>,
) -> Result<Json<Presence>, ApiError> {
    apply(&state, &auth, b).await?;
    Ok(Json(state.presence.presence(auth.account()).await?))
}
