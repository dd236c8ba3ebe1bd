//! Contact requests and mutual contacts over HTTP.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Body;
use crate::domain::account::{AccountSummary, PERM_CONTACTS, normalize_username};
use crate::domain::ids::{AccountId, RequestId, now_ms};
use crate::domain::link::RequestOutcome;
use crate::services::push::{MutualContact, Push};
use crate::services::store::StoreError;
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

async fn mutual_view(state: &AppState, account: AccountSummary) -> Result<MutualContact, ApiError> {
    let presence = state.presence.presence(account.id).await?;
    Ok(MutualContact { account, presence })
}

/// Tells both sides (every device) that they are now mutual contacts.
async fn announce_mutual(state: &AppState, a: AccountId, b: AccountId) -> Result<(), ApiError> {
    for (to, other) in [(a, b), (b, a)] {
        if let Some(summary) = state.store.account_summary(other).await? {
            let view = mutual_view(state, summary).await?;
            state
                .hub
                .publish(
                    &[to],
                    &Push::MutualContactAdded {
                        contact: Box::new(view),
                    },
                )
                .await?;
        }
    }
    Ok(())
}

/// `GET /api/v1/contact-requests`: pending requests, both ways.
pub(crate) async fn list_requests(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (incoming, outgoing) = state.store.requests(auth.account()).await?;
    Ok(Json(
        serde_json::json!({ "incoming": incoming, "outgoing": outgoing }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestBody {
    username: String,
    #[serde(default)]
    message: String,
}

/// `POST /api/v1/contact-requests`: asks another user to become mutual
/// contacts. If they had already asked, the two are linked at once.
pub(crate) async fn send_request(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<RequestBody>,
) -> Result<Response, ApiError> {
    auth.require(PERM_CONTACTS)?;
    let username = normalize_username("username", &b.username)?;
    let message = b.message.trim();
    if message.chars().count() > 280 || message.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "message",
            "must be at most 280 characters without control characters",
        ));
    }
    let Some((to, _)) = state.store.account_by_username(&username).await? else {
        return Err(ApiError::not_found("no such user"));
    };
    if to.id == auth.account() {
        return Err(ApiError::invalid("username", "is yourself"));
    }
    match state
        .store
        .create_request(auth.account(), to.id, message, now_ms())
        .await
    {
        Ok(RequestOutcome::Pending(request)) => {
            let push = Push::ContactRequest {
                request: Box::new(request.clone()),
            };
            state.hub.publish(&[to.id, auth.account()], &push).await?;
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({ "status": "pending", "request": request })),
            )
                .into_response())
        }
        Ok(RequestOutcome::Mutual) => {
            announce_mutual(&state, auth.account(), to.id).await?;
            let summary = AccountSummary {
                id: to.id,
                username: to.username,
                display_name: to.display_name,
            };
            let view = mutual_view(&state, summary).await?;
            Ok((
                StatusCode::OK,
                Json(serde_json::json!({ "status": "mutual", "contact": view })),
            )
                .into_response())
        }
        Err(StoreError::Conflict) => Err(ApiError::conflict(
            "already mutual contacts, or a request is already pending",
        )),
        Err(e) => Err(e.into()),
    }
}

fn request_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("no such contact request"))
}

/// `POST /api/v1/contact-requests/{id}/accept` (by the recipient).
pub(crate) async fn accept_request(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.require(PERM_CONTACTS)?;
    let id = request_id(&id)?;
    let Some(request) = state
        .store
        .accept_request(id, auth.account(), now_ms())
        .await?
    else {
        return Err(ApiError::not_found("no such contact request"));
    };
    announce_mutual(&state, request.from.id, request.to.id).await?;
    let view = mutual_view(&state, request.from).await?;
    Ok(Json(serde_json::json!({ "contact": view })))
}

/// `DELETE /api/v1/contact-requests/{id}`: the recipient declines, or the
/// sender withdraws.
pub(crate) async fn delete_request(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = request_id(&id)?;
    let Some(request) = state.store.delete_request(id, auth.account()).await? else {
        return Err(ApiError::not_found("no such contact request"));
    };
    let push = Push::ContactRequestRemoved { id };
    state
        .hub
        .publish(&[request.from.id, request.to.id], &push)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/mutual-contacts`: who sees one's presence, with theirs.
pub(crate) async fn list_mutual(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let contacts = state.presence.mutual_contacts(auth.account()).await?;
    Ok(Json(serde_json::json!({ "contacts": contacts })))
}

/// `DELETE /api/v1/mutual-contacts/{account_id}`: ends the link both ways.
pub(crate) async fn remove_mutual(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found("no such contact");
    let other: AccountId = id.parse().map_err(|_| not_found())?;
    if !state.store.remove_mutual(auth.account(), other).await? {
        return Err(not_found());
    }
    for (to, gone) in [(auth.account(), other), (other, auth.account())] {
        state
            .hub
            .publish(&[to], &Push::MutualContactRemoved { account_id: gone })
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
