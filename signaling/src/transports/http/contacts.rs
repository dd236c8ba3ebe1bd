//! The address book over HTTP, with pushes to every device of the account.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Body;
use crate::domain::account::PERM_CONTACTS;
use crate::domain::contact::{Contact, ContactBody, ContactFilter};
use crate::domain::ids::{AccountId, ContactId, now_ms};
use crate::services::push::Push;
use crate::services::store::ContactWriteError;
use crate::transports::auth::Authed;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// Most changes returned by one `changes` call.
const MAX_CHANGES: i64 = 1000;

type RawQuery = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn query(q: RawQuery, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(k, "unknown query parameter"));
    }
    Ok(q)
}

fn int_param(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::invalid(key, "must be an integer"))
        })
        .transpose()
}

fn contact_id(raw: &str) -> Result<ContactId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("no such contact"))
}

fn write_error(e: ContactWriteError) -> ApiError {
    match e {
        ContactWriteError::NotFound => ApiError::not_found("no such contact"),
        ContactWriteError::Stale { based_on, current } => {
            let mut err = ApiError::conflict(format!(
                "the contact changed: your edit was based on version {based_on}, the current version is {}",
                current.version
            ));
            err.current = serde_json::to_value(&*current).ok();
            err
        }
        ContactWriteError::NoSuchLinkedAccount => {
            ApiError::invalid("linked_account", "no such account")
        }
        ContactWriteError::Store(e) => e.into(),
    }
}

/// Resolves and checks the account a contact links. By id: the own
/// account, a mutual contact's, or the one the entry links already
/// (`current`); nobody else's, since the entry shows the linked username and
/// ids are sequential: any account's name would be one request away.
/// Unknown and not allowed are refused alike. By username: any account
/// (whoever names it knows the name already).
async fn resolve_link(
    state: &AppState,
    account: AccountId,
    body: &ContactBody,
    current: Option<AccountId>,
) -> Result<Option<AccountId>, ApiError> {
    if let Some(name) = &body.linked_username {
        let name = name.trim().to_ascii_lowercase();
        return match state.store.account_by_username(&name).await? {
            Some((a, _)) => Ok(Some(a.id)),
            None => Err(ApiError::invalid("linked_username", "no such account")),
        };
    }
    match body.linked_account {
        None => Ok(None),
        Some(other) if other == account || Some(other) == current => Ok(Some(other)),
        Some(other) if state.store.is_mutual(account, other).await? => Ok(Some(other)),
        Some(_) => Err(ApiError::invalid(
            "linked_account",
            "no such account among your mutual contacts (link others by linked_username)",
        )),
    }
}

/// Tells every device of `account` about a change.
async fn push_change(state: &AppState, account: AccountId, c: &Contact) -> Result<(), ApiError> {
    let push = if c.deleted {
        Push::ContactDeleted {
            revision: c.revision,
            id: c.id,
            version: c.version,
        }
    } else {
        Push::ContactChanged {
            revision: c.revision,
            contact: Box::new(c.clone()),
        }
    };
    Ok(state.hub.publish(&[account], &push).await?)
}

/// `GET /api/v1/contacts?q=&favorite=&group=`: the live entries and the revision.
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Authed,
    q: RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q, &["q", "favorite", "group"])?;
    let favorite = q
        .get("favorite")
        .map(|v| match v.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::invalid("favorite", "must be true or false")),
        })
        .transpose()?;
    let filter = ContactFilter {
        q: q.get("q").cloned(),
        favorite,
        group: q.get("group").cloned(),
    };
    let (contacts, revision) = state.store.list_contacts(auth.account(), &filter).await?;
    Ok(Json(
        serde_json::json!({ "revision": revision, "contacts": contacts }),
    ))
}

/// `GET /api/v1/contacts/changes?since=N&limit=M`: what changed after
/// revision N, deletions included as tombstones.
pub(crate) async fn changes(
    State(state): State<AppState>,
    auth: Authed,
    q: RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q, &["since", "limit"])?;
    let since = int_param(&q, "since")?.unwrap_or(0);
    let limit = int_param(&q, "limit")?.unwrap_or(500);
    if since < 0 {
        return Err(ApiError::invalid("since", "must not be negative"));
    }
    if !(1..=MAX_CHANGES).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_CHANGES}"),
        ));
    }
    let current = state.store.contacts_revision(auth.account()).await?;
    if since > current {
        return Err(ApiError::invalid(
            "since",
            format!("is ahead of the current revision {current}: sync again from 0"),
        ));
    }
    let page = state
        .store
        .contact_changes(auth.account(), since, limit)
        .await?;
    Ok(Json(serde_json::json!({
        "revision": page.revision,
        "changes": page.changes,
        "has_more": page.has_more,
    })))
}

/// `POST /api/v1/contacts`.
pub(crate) async fn create(
    State(state): State<AppState>,
    auth: Authed,
    Body(b): Body<ContactBody>,
) -> Result<Response, ApiError> {
    auth.require(PERM_CONTACTS)?;
    if b.version.is_some() {
        return Err(ApiError::invalid("version", "is not allowed when creating"));
    }
    let mut fields = b.validate()?;
    fields.linked_account = resolve_link(&state, auth.account(), &b, None).await?;
    let c = state
        .store
        .create_contact(auth.account(), &fields, now_ms())
        .await
        .map_err(write_error)?;
    push_change(&state, auth.account(), &c).await?;
    tracing::debug!(account = %auth.account(), contact = %c.id, revision = c.revision, "contact created");
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

/// `GET /api/v1/contacts/{id}`.
pub(crate) async fn get_one(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Contact>, ApiError> {
    let id = contact_id(&id)?;
    state
        .store
        .contact(auth.account(), id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such contact"))
}

/// `PUT /api/v1/contacts/{id}`: replaces the entry; `version` names the
/// version the edit is based on, and a stale one is 409 with the current entry.
pub(crate) async fn update(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    Body(b): Body<ContactBody>,
) -> Result<Json<Contact>, ApiError> {
    auth.require(PERM_CONTACTS)?;
    let id = contact_id(&id)?;
    let Some(based_on) = b.version else {
        return Err(ApiError::invalid(
            "version",
            "is required: the version this edit is based on",
        ));
    };
    let mut fields = b.validate()?;
    let current = state
        .store
        .contact(auth.account(), id)
        .await?
        .and_then(|c| c.fields.and_then(|f| f.linked_account));
    fields.linked_account = resolve_link(&state, auth.account(), &b, current).await?;
    let c = state
        .store
        .update_contact(auth.account(), id, based_on, &fields, now_ms())
        .await
        .map_err(write_error)?;
    push_change(&state, auth.account(), &c).await?;
    Ok(Json(c))
}

/// `DELETE /api/v1/contacts/{id}?version=N`: deletes the entry (if still at
/// version N, when given); returns the tombstone.
pub(crate) async fn remove(
    State(state): State<AppState>,
    auth: Authed,
    Path(id): Path<String>,
    q: RawQuery,
) -> Result<Json<Contact>, ApiError> {
    auth.require(PERM_CONTACTS)?;
    let id = contact_id(&id)?;
    let q = query(q, &["version"])?;
    let based_on = int_param(&q, "version")?;
    let c = state
        .store
        .delete_contact(auth.account(), id, based_on, now_ms())
        .await
        .map_err(write_error)?;
    push_change(&state, auth.account(), &c).await?;
    Ok(Json(c))
}
