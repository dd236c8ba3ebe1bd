//! Calls over HTTP (docs/api.md, "Calls"): place, answer, decline, cancel,
//! hang up, add people, chat; history and missed calls; do-not-disturb.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Body;
use crate::domain::account::PERM_ROOMS_JOIN;
use crate::domain::call::state::Invitee;
use crate::domain::call::{Allow, CallSettings, Person};
use crate::domain::ids::{AccountId, CallId, CallRecordId};
use crate::services::push::Push;
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// Longest chat message, in characters.
const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest client id an accepting client may give.
const MAX_CLIENT_ID: usize = 64;
/// Default and largest history page.
const HISTORY_PAGE: i64 = 50;
const HISTORY_MAX: i64 = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    to: Vec<AccountId>,
    #[serde(default)]
    video: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddBody {
    to: Vec<AccountId>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptBody {
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageBody {
    text: String,
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

fn call_id(s: &str) -> Result<CallId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("no such call"))
}

/// Checks and resolves the accounts to ring: each must exist and be
/// enabled (else 404), not be the caller (400); do-not-disturb decides
/// whether it is filtered.
async fn invitees(
    state: &AppState,
    caller: AccountId,
    to: &[AccountId],
) -> Result<Vec<Invitee>, ApiError> {
    if to.is_empty() {
        return Err(ApiError::invalid("to", "invite at least one account"));
    }
    let max = state.config.calls.max_participants as usize;
    if to.len() >= max {
        return Err(ApiError::invalid(
            "to",
            format!("at most {} people per call", max - 1),
        ));
    }
    let mut out: Vec<Invitee> = Vec::with_capacity(to.len());
    for id in to {
        if *id == caller {
            return Err(ApiError::invalid("to", "you cannot call yourself"));
        }
        if out.iter().any(|i| i.person.account_id == *id) {
            continue;
        }
        let account = match state.store.account(*id).await? {
            Some(a) if !a.disabled => a,
            _ => return Err(ApiError::not_found(format!("no such account: {id}"))),
        };
        let filtered = filters(state, *id, caller).await?;
        out.push(Invitee {
            person: Person {
                account_id: account.id,
                username: account.username,
                display_name: account.display_name,
            },
            filtered,
        });
    }
    Ok(out)
}

/// Whether `callee`'s do-not-disturb keeps `caller` from ringing.
async fn filters(state: &AppState, callee: AccountId, caller: AccountId) -> Result<bool, ApiError> {
    let s = state.store.call_settings(callee).await?;
    if !s.dnd {
        return Ok(false);
    }
    let allowed = match s.allow {
        Allow::Nobody => false,
        Allow::Contacts => {
            state.store.is_mutual(callee, caller).await?
                || state.store.has_contact(callee, caller, false).await?
        }
        Allow::Favorites => state.store.has_contact(callee, caller, true).await?,
    };
    Ok(!allowed)
}

async fn me(state: &AppState, auth: &Authed) -> Result<Person, ApiError> {
    let a = state
        .store
        .account(auth.account())
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown account"))?;
    Ok(Person {
        account_id: a.id,
        username: a.username,
        display_name: a.display_name,
    })
}

/// `POST /api/v1/calls`: rings every device of each invitee.
pub(crate) async fn invite(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<InviteBody>,
) -> Result<Response, ApiError> {
    auth.require(PERM_ROOMS_JOIN)?;
    let caller = me(&state, &auth).await?;
    let to = invitees(&state, auth.account(), &b.to).await?;
    let call = state
        .calls
        .invite(caller, auth.device(), to, b.video)
        .await?;
    let room = call.room.clone();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "call": call, "room": room })),
    )
        .into_response())
}

/// `GET /api/v1/calls/active`: the calls the account rings for or is in.
pub(crate) async fn active(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let calls = state.calls.active(auth.account()).await?;
    Ok(Json(serde_json::json!({ "calls": calls })))
}

/// `GET /api/v1/calls/{id}`: one call (members only) with its chat.
pub(crate) async fn get_one(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (call, messages) = state.calls.call(call_id(&id)?, auth.account()).await?;
    Ok(Json(
        serde_json::json!({ "call": call, "messages": messages }),
    ))
}

/// `POST /api/v1/calls/{id}/accept`: answers on this device (first wins).
pub(crate) async fn accept(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.require(PERM_ROOMS_JOIN)?;
    let id = call_id(&id)?;
    let b: AcceptBody = if body.iter().all(u8::is_ascii_whitespace) {
        AcceptBody::default()
    } else {
        super::parse(&body)?
    };
    if b.client_id
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CLIENT_ID || c.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "client_id",
            format!("must be at most {MAX_CLIENT_ID} bytes without control characters"),
        ));
    }
    let call = state
        .calls
        .accept(id, auth.account(), auth.device(), b.client_id)
        .await?;
    let room = call.room.clone();
    Ok(Json(serde_json::json!({ "call": call, "room": room })))
}

/// `POST /api/v1/calls/{id}/decline`.
pub(crate) async fn decline(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let call = state.calls.decline(call_id(&id)?, auth.account()).await?;
    Ok(Json(serde_json::json!({ "call": call })))
}

/// `POST /api/v1/calls/{id}/cancel`: the caller hangs up before an answer.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let call = state.calls.cancel(call_id(&id)?, auth.account()).await?;
    Ok(Json(serde_json::json!({ "call": call })))
}

/// `POST /api/v1/calls/{id}/leave`: hangs up.
pub(crate) async fn leave(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let call = state.calls.leave(call_id(&id)?, auth.account()).await?;
    Ok(Json(serde_json::json!({ "call": call })))
}

/// `POST /api/v1/calls/{id}/invite`: adds people to a running call.
pub(crate) async fn add(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    Body(b): Body<AddBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.require(PERM_ROOMS_JOIN)?;
    let id = call_id(&id)?;
    // Not a member: 404 before anything about the invitees is revealed.
    state.calls.call(id, auth.account()).await?;
    let to = invitees(&state, auth.account(), &b.to).await?;
    let call = state.calls.add(id, auth.account(), to).await?;
    Ok(Json(serde_json::json!({ "call": call })))
}

/// `POST /api/v1/calls/{id}/messages`: a chat message to everyone in the call.
pub(crate) async fn message(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    Body(b): Body<MessageBody>,
) -> Result<Response, ApiError> {
    let text = b.text.trim().to_owned();
    if text.is_empty() || text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::invalid(
            "text",
            format!("must be 1 to {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    let message = state
        .calls
        .message(call_id(&id)?, auth.account(), auth.device(), text)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "message": message })),
    )
        .into_response())
}

/// `GET /api/v1/calls/history?before=&limit=`: newest first.
pub(crate) async fn history(
    State(state): State<AppState>,
    auth: Authed,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let before = match q.before.as_deref().filter(|b| !b.is_empty()) {
        Some(b) => Some(
            b.parse::<CallRecordId>()
                .map_err(|_| ApiError::invalid("before", "must be a positive integer"))?,
        ),
        None => None,
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=HISTORY_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be 1 to {HISTORY_MAX}"),
                ));
            }
        },
        None => HISTORY_PAGE,
    };
    // One more than asked tells whether another page follows.
    let mut calls = state
        .store
        .call_history(auth.account(), before, limit + 1)
        .await?;
    let more = calls.len() as i64 > limit;
    calls.truncate(limit as usize);
    let next = if more {
        calls.last().map(|c| c.id)
    } else {
        None
    };
    Ok(Json(
        serde_json::json!({ "calls": calls, "next_before": next }),
    ))
}

/// `GET /api/v1/calls/missed-count`.
pub(crate) async fn missed_count(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = state.store.missed_count(auth.account()).await?;
    Ok(Json(serde_json::json!({ "count": count })))
}

/// `POST /api/v1/calls/missed/seen`: clears the count on every device.
pub(crate) async fn missed_seen(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.mark_missed_seen(auth.account()).await?;
    state
        .hub
        .publish(&[auth.account()], &Push::MissedCalls { count: 0 })
        .await?;
    Ok(Json(serde_json::json!({ "count": 0 })))
}

/// `GET /api/v1/calls/settings`.
pub(crate) async fn settings(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<Json<CallSettings>, ApiError> {
    Ok(Json(state.store.call_settings(auth.account()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsBody {
    #[serde(default)]
    dnd: Option<bool>,
    #[serde(default)]
    allow: Option<Allow>,
}

/// `PUT /api/v1/calls/settings {dnd?, allow?}`: pushed to every device.
pub(crate) async fn set_settings(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<SettingsBody>,
) -> Result<Json<CallSettings>, ApiError> {
    let mut s = state.store.call_settings(auth.account()).await?;
    if let Some(d) = b.dnd {
        s.dnd = d;
    }
    if let Some(a) = b.allow {
        s.allow = a;
    }
    state.store.set_call_settings(auth.account(), s).await?;
    state
        .hub
        .publish(&[auth.account()], &Push::CallSettings(s))
        .await?;
    Ok(Json(s))
}
