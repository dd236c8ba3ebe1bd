//! The server API for integrations (LiveKit's RoomService, as REST):
//! rooms, their participants, moderation, data messages and join tokens.
//!
//! Authorised by a JWT signed with the API key and secret carrying admin
//! grants: `roomCreate` (create, delete), `roomList` (list, get), and
//! `roomAdmin` for the token's `room` (participants, tracks, data, tokens);
//! or an account access token with `rooms:admin` (every grant, every room).
//! No token: 401; the wrong grant: 403.
//!
//! Each operation is a function here (`open_room`, `list_rooms`, ...) that
//! both this REST API and LiveKit's Twirp RoomService (`transports::twirp`)
//! call: one implementation of the checks, two encodings.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use vela_media::core::{
    DataMessage, ParticipantInfo, RoomId, RoomInfo, RoomOptions, SignalError, TrackId,
};
use vela_media::{MediaError, PermissionsUpdate};

use super::Body;
use crate::domain::account::PERM_ROOMS_ADMIN;
use crate::services::room_directory::RoomHome;
use crate::services::token::{Credential, VideoGrant};
use crate::transports::auth::bearer;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// The empty timeout of a room created without one (LiveKit's default).
const DEFAULT_EMPTY_TIMEOUT_SECS: u64 = 300;
/// The longest empty timeout (a week).
const MAX_EMPTY_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// The longest room metadata.
const MAX_METADATA: usize = 4096;
/// The longest lifetime of a minted token (a day).
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// The admin grants of a server API request.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    create: bool,
    list: bool,
    /// `None`: every room (an admin account); else the token's room.
    admin_of: Option<Option<String>>,
    /// A room token's own grants and expiry: what a token it mints may
    /// carry at most. `None` for an admin account.
    own: Option<OwnGrants>,
}

/// What a room token used on the server API may itself do.
#[derive(Debug, Clone, Copy)]
struct OwnGrants {
    publish: bool,
    subscribe: bool,
    publish_data: bool,
    /// Its expiry, seconds since the epoch.
    exp: u64,
}

impl Admin {
    fn all() -> Self {
        Admin {
            create: true,
            list: true,
            admin_of: Some(None),
            own: None,
        }
    }

    fn require_create(&self) -> Result<(), ApiError> {
        if self.create {
            Ok(())
        } else {
            Err(ApiError::forbidden("needs the roomCreate grant"))
        }
    }

    pub(crate) fn require_list(&self) -> Result<(), ApiError> {
        if self.list {
            Ok(())
        } else {
            Err(ApiError::forbidden("needs the roomList grant"))
        }
    }

    fn require_admin(&self, room: &RoomId) -> Result<(), ApiError> {
        match &self.admin_of {
            Some(None) => Ok(()),
            Some(Some(r)) if r == room.as_str() => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "needs the roomAdmin grant for room {room}"
            ))),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        match state.keys.verify_credential(token)? {
            Credential::Room(c) => Ok(Admin {
                create: c.video.room_create,
                list: c.video.room_list,
                // roomAdmin applies to the token's room only; without one, to none.
                admin_of: c
                    .video
                    .room_admin
                    .then(|| Some(c.video.room.clone().unwrap_or_default())),
                own: Some(OwnGrants {
                    publish: c.can_publish(),
                    subscribe: c.can_subscribe(),
                    publish_data: c.can_publish_data(),
                    exp: c.exp,
                }),
            }),
            Credential::Access(_) => {
                let claims = state.authenticate(token).await?;
                if claims.has(PERM_ROOMS_ADMIN) {
                    Ok(Admin::all())
                } else {
                    Err(ApiError::forbidden(format!(
                        "needs the {PERM_ROOMS_ADMIN} permission"
                    )))
                }
            }
        }
    }
}

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    RoomId::new(raw).map_err(|e| ApiError::invalid("room", e.to_string()))
}

fn no_room(room: &RoomId) -> ApiError {
    ApiError::not_found(format!("no room {room}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRoom {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) max_participants: Option<u32>,
    /// Seconds; 0 closes the room as its last participant leaves.
    #[serde(default)]
    pub(crate) empty_timeout: Option<u64>,
    #[serde(default)]
    pub(crate) metadata: Option<String>,
}

/// What opening a room came to.
pub(crate) enum Opened {
    /// Open on this node (just now, or already).
    Here(RoomInfo),
    /// It belongs on another node: the redirect (307) there.
    Elsewhere(Response),
}

/// `POST /api/v1/rooms`: opens a room (or returns the existing one).
pub(crate) async fn create(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    admin: Admin,
    Body(body): Body<CreateRoom>,
) -> Result<Response, ApiError> {
    Ok(match open_room(&state, &admin, &uri, body).await? {
        Opened::Here(info) => Json(info).into_response(),
        Opened::Elsewhere(redirect) => redirect,
    })
}

/// Opens a room (`roomCreate`), or finds it open; `uri` is the request's,
/// for the redirect when the room belongs on another node.
pub(crate) async fn open_room(
    state: &AppState,
    admin: &Admin,
    uri: &Uri,
    body: CreateRoom,
) -> Result<Opened, ApiError> {
    admin.require_create()?;
    let room =
        room_id(&body.name).map_err(|_| ApiError::invalid("name", "is not a valid room name"))?;
    if crate::domain::call::is_call_room(room.as_str()) {
        return Err(ApiError::invalid(
            "name",
            "rooms named call-* belong to calls",
        ));
    }
    let max_participants = body.max_participants.unwrap_or(0);
    if max_participants > 100_000 {
        return Err(ApiError::invalid(
            "max_participants",
            "must be at most 100000",
        ));
    }
    let empty_timeout = body.empty_timeout.unwrap_or(DEFAULT_EMPTY_TIMEOUT_SECS);
    if empty_timeout > MAX_EMPTY_TIMEOUT_SECS {
        return Err(ApiError::invalid(
            "empty_timeout",
            format!("must be at most {MAX_EMPTY_TIMEOUT_SECS} seconds"),
        ));
    }
    let metadata = body.metadata.unwrap_or_default();
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            "metadata",
            format!("must be at most {MAX_METADATA} bytes"),
        ));
    }
    let options = RoomOptions {
        max_participants,
        empty_timeout: (empty_timeout > 0).then(|| Duration::from_secs(empty_timeout)),
        metadata,
    };
    // Opened where the directory places it: elsewhere, the client repeats
    // the request there.
    if let RoomHome::Elsewhere { node, public_url } = state.rooms.home(&room).await? {
        return Ok(Opened::Elsewhere(crate::transports::cluster::redirect(
            state,
            &public_url,
            &node,
            uri,
        )));
    }
    Ok(Opened::Here(state.media.create_room(&room, options).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Comma-separated room names to list; absent: all.
    #[serde(default)]
    names: Option<String>,
    /// `node`: this node's rooms only (in a cluster; else every node's).
    #[serde(default)]
    scope: Option<String>,
}

/// `GET /api/v1/rooms?names=a,b`: open rooms, of every node of a cluster.
pub(crate) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    headers: axum::http::HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin.require_list()?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let this_node = match q.scope.as_deref() {
        None | Some("") | Some("cluster") => false,
        Some("node") => true,
        Some(_) => return Err(ApiError::invalid("scope", "must be node or cluster")),
    };
    let (rooms, unreachable) = list_rooms(
        &state,
        &admin,
        bearer(&headers)?,
        q.names.as_deref(),
        this_node,
    )
    .await?;
    let mut answer = serde_json::json!({ "rooms": rooms });
    if !unreachable.is_empty() {
        answer["unreachable_nodes"] = unreachable.into();
    }
    Ok(Json(answer))
}

/// The open rooms (`roomList`) named in `names` (comma-separated; `None`:
/// all) by name, as JSON Rooms, of this node or (unless `this_node`) of
/// every node of the cluster, asked with `token`; and the nodes that did
/// not answer.
pub(crate) async fn list_rooms(
    state: &AppState,
    admin: &Admin,
    token: &str,
    names: Option<&str>,
    this_node: bool,
) -> Result<(Vec<serde_json::Value>, Vec<String>), ApiError> {
    admin.require_list()?;
    let wanted: Option<Vec<&str>> = names
        .filter(|n| !n.is_empty())
        .map(|n| n.split(',').map(str::trim).collect());
    // Each shard has its rooms; listed together, by name.
    let mut rooms: Vec<serde_json::Value> = state
        .media
        .rooms()
        .await?
        .into_iter()
        .filter(|r| wanted.as_ref().is_none_or(|n| n.contains(&r.name.as_str())))
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    // In a cluster, the other nodes' too, asked with the caller's token.
    let mut unreachable = Vec::new();
    if !this_node && state.nodes.is_some() {
        let (theirs, missing) = super::cluster::other_nodes_rooms(state, token, names).await;
        rooms.extend(theirs);
        unreachable = missing;
    }
    rooms.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    // A room spread over nodes is listed by each of them, each counting
    // the whole room: listed once, with the highest count (a node's view
    // may lag a join or a leave by a moment).
    rooms.dedup_by(|later, kept| {
        let same = later["name"] == kept["name"];
        if same && later["num_participants"].as_u64() > kept["num_participants"].as_u64() {
            std::mem::swap(later, kept);
        }
        same
    });
    Ok((rooms, unreachable))
}

/// `GET /api/v1/rooms/{room}`.
pub(crate) async fn get_one(
    State(state): State<AppState>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<RoomInfo>, ApiError> {
    let room = room_id(&room)?;
    if admin.require_list().is_err() {
        admin.require_admin(&room)?;
    }
    let info = state.media.room(&room).await?;
    info.map(Json).ok_or_else(|| no_room(&room))
}

/// `DELETE /api/v1/rooms/{room}`: everyone in it leaves (`room_deleted`).
pub(crate) async fn delete(
    State(state): State<AppState>,
    admin: Admin,
    headers: axum::http::HeaderMap,
    Path(room): Path<String>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin.require_create()?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let this_node = match q.scope.as_deref() {
        None | Some("") | Some("cluster") => false,
        Some("node") => true,
        Some(_) => return Err(ApiError::invalid("scope", "must be node or cluster")),
    };
    delete_room(&state, &admin, bearer(&headers)?, &room, this_node).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Closes a room (`roomCreate`): here and (unless `this_node`) on the other
/// nodes holding a part of it, asked with `token`.
pub(crate) async fn delete_room(
    state: &AppState,
    admin: &Admin,
    token: &str,
    room: &str,
    this_node: bool,
) -> Result<(), ApiError> {
    admin.require_create()?;
    let room = room_id(room)?;
    let mut found = state.media.delete_room(&room).await?;
    // A room spread over nodes: its other nodes delete their parts too.
    if !this_node {
        found |= super::cluster::delete_on_other_nodes(state, token, &room).await;
    }
    if !found {
        return Err(no_room(&room));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    /// `node`: this node's part of the room only (in a cluster; else the
    /// part on every node holding it).
    #[serde(default)]
    scope: Option<String>,
}

/// `GET /api/v1/rooms/{room}/participants`.
pub(crate) async fn participants(
    State(state): State<AppState>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = list_participants(&state, &admin, &room).await?;
    Ok(Json(serde_json::json!({ "participants": list })))
}

/// The participants of a room (`roomAdmin`).
pub(crate) async fn list_participants(
    state: &AppState,
    admin: &Admin,
    room: &str,
) -> Result<Vec<ParticipantInfo>, ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    match state.media.room_participants(&room).await {
        Err(MediaError::Signal(SignalError::UnknownRoom)) => Err(no_room(&room)),
        r => Ok(r?),
    }
}

/// `GET /api/v1/rooms/{room}/participants/{identity}`.
pub(crate) async fn participant(
    State(state): State<AppState>,
    admin: Admin,
    Path((room, identity)): Path<(String, String)>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    get_participant(&state, &admin, &room, &identity)
        .await
        .map(Json)
}

/// One participant of a room, by identity (`roomAdmin`).
pub(crate) async fn get_participant(
    state: &AppState,
    admin: &Admin,
    room: &str,
    identity: &str,
) -> Result<ParticipantInfo, ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    let info = match state.media.participant(&room, identity).await {
        Err(MediaError::Signal(SignalError::UnknownRoom)) => return Err(no_room(&room)),
        r => r?,
    };
    info.ok_or_else(|| ApiError::not_found(format!("no participant {identity} in {room}")))
}

/// `DELETE /api/v1/rooms/{room}/participants/{identity}`: removes it
/// (`left` with reason `removed`).
pub(crate) async fn remove(
    State(state): State<AppState>,
    admin: Admin,
    Path((room, identity)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    remove_participant(&state, &admin, &room, &identity).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes a participant from a room (`roomAdmin`).
pub(crate) async fn remove_participant(
    state: &AppState,
    admin: &Admin,
    room: &str,
    identity: &str,
) -> Result<(), ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    Ok(state.media.remove_participant(&room, identity).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateParticipant {
    permission: PermissionBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionBody {
    #[serde(default)]
    can_publish: Option<bool>,
    #[serde(default)]
    can_subscribe: Option<bool>,
    #[serde(default)]
    can_publish_data: Option<bool>,
}

/// `PATCH /api/v1/rooms/{room}/participants/{identity}`: changes its
/// permissions at once (fields left out keep their value).
pub(crate) async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path((room, identity)): Path<(String, String)>,
    Body(body): Body<UpdateParticipant>,
) -> Result<Json<ParticipantInfo>, ApiError> {
    let p = body.permission;
    let update = PermissionsUpdate {
        publish: p.can_publish,
        subscribe: p.can_subscribe,
        publish_data: p.can_publish_data,
    };
    update_permissions(&state, &admin, &room, &identity, update)
        .await
        .map(Json)
}

/// Changes a participant's permissions at once (`roomAdmin`); returns it
/// as it is now.
pub(crate) async fn update_permissions(
    state: &AppState,
    admin: &Admin,
    room: &str,
    identity: &str,
    update: PermissionsUpdate,
) -> Result<ParticipantInfo, ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    Ok(state
        .media
        .update_permissions(&room, identity, update)
        .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MuteBody {
    muted: bool,
}

/// `POST /api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute`:
/// mutes or unmutes a published track for everyone.
pub(crate) async fn mute(
    State(state): State<AppState>,
    admin: Admin,
    Path((room, identity, track)): Path<(String, String, String)>,
    Body(body): Body<MuteBody>,
) -> Result<Json<vela_media::core::TrackInfo>, ApiError> {
    mute_track(&state, &admin, &room, &identity, &track, body.muted)
        .await
        .map(Json)
}

/// Mutes or unmutes a participant's published track (`roomAdmin`); the
/// track by its id (`TR<n>`).
pub(crate) async fn mute_track(
    state: &AppState,
    admin: &Admin,
    room: &str,
    identity: &str,
    track: &str,
    muted: bool,
) -> Result<vela_media::core::TrackInfo, ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    let track: TrackId = track
        .parse()
        .map_err(|_| ApiError::not_found("no such track"))?;
    Ok(state
        .media
        .mute_track(&room, identity, track, muted)
        .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataBody {
    /// Base64.
    payload: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    destination_identities: Vec<String>,
}

/// `POST /api/v1/rooms/{room}/data`: a data message from the server to
/// everyone in the room, or to the named identities.
pub(crate) async fn send_data(
    State(state): State<AppState>,
    admin: Admin,
    Path(room): Path<String>,
    Body(body): Body<DataBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let payload = crate::transports::room_socket::decode_payload(&body.payload)?;
    let n = send_room_data(
        &state,
        &admin,
        &room,
        payload,
        body.topic,
        body.destination_identities,
    )
    .await?;
    Ok(Json(serde_json::json!({ "recipients": n })))
}

/// A data message from the server to a room's participants (`roomAdmin`):
/// everyone, or the `destinations` identities; returns how many it went to.
pub(crate) async fn send_room_data(
    state: &AppState,
    admin: &Admin,
    room: &str,
    payload: std::sync::Arc<[u8]>,
    topic: Option<String>,
    destinations: Vec<String>,
) -> Result<usize, ApiError> {
    let room = room_id(room)?;
    admin.require_admin(&room)?;
    let max = crate::transports::room_socket::MAX_DATA_BYTES;
    if payload.len() > max {
        return Err(ApiError::invalid(
            "payload",
            format!("is larger than {max} bytes"),
        ));
    }
    if topic.as_ref().is_some_and(|t| t.len() > 256) {
        return Err(ApiError::invalid("topic", "must be at most 256 bytes"));
    }
    let message = DataMessage {
        payload,
        topic: topic.filter(|t| !t.is_empty()).map(Into::into),
        destinations,
    };
    Ok(state.media.send_data(&room, message).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    identity: String,
    room: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    can_publish: Option<bool>,
    #[serde(default)]
    can_subscribe: Option<bool>,
    #[serde(default)]
    can_publish_data: Option<bool>,
    #[serde(default)]
    room_admin: Option<bool>,
}

/// A grant the minted token asks for (`None`: the default, allowed), capped
/// by the minting token's own: asking for more than it has is refused.
fn capped(field: &str, asked: Option<bool>, own: bool) -> Result<bool, ApiError> {
    match asked {
        Some(true) if !own => Err(ApiError::forbidden(format!(
            "{field}: cannot grant what the token itself lacks"
        ))),
        Some(v) => Ok(v && own),
        None => Ok(own),
    }
}

/// `POST /api/v1/tokens`: a join token for an identity with no account here.
pub(crate) async fn mint_token(
    State(state): State<AppState>,
    admin: Admin,
    Body(body): Body<TokenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = room_id(&body.room)?;
    if admin.require_create().is_err() {
        admin.require_admin(&room)?;
    }
    if body.identity.is_empty() || body.identity.chars().count() > 128 {
        return Err(ApiError::invalid("identity", "must be 1 to 128 characters"));
    }
    if body.name.as_ref().is_some_and(|n| n.chars().count() > 128) {
        return Err(ApiError::invalid("name", "must be at most 128 characters"));
    }
    let mut ttl = body.ttl_secs.unwrap_or(state.config.auth.token_ttl_secs);
    if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_secs",
            format!("must be between 1 and {MAX_TOKEN_TTL_SECS}"),
        ));
    }
    let room_admin = body.room_admin.unwrap_or(false);
    if room_admin {
        // roomCreate alone does not make its holder a moderator.
        admin.require_admin(&room)?;
    }
    let mut grant = VideoGrant {
        room: Some(room.to_string()),
        room_join: true,
        can_publish: body.can_publish,
        can_subscribe: body.can_subscribe,
        can_publish_data: body.can_publish_data,
        room_admin,
        ..VideoGrant::default()
    };
    // A token minted with a room token carries no more than that token:
    // its grants, and an expiry no later than its own.
    if let Some(own) = admin.own {
        grant.can_publish = Some(capped("can_publish", body.can_publish, own.publish)?);
        grant.can_subscribe = Some(capped("can_subscribe", body.can_subscribe, own.subscribe)?);
        grant.can_publish_data = Some(capped(
            "can_publish_data",
            body.can_publish_data,
            own.publish_data,
        )?);
        let left = own.exp.saturating_sub(crate::services::token::now_secs());
        if left == 0 {
            return Err(ApiError::unauthorized("the token has expired"));
        }
        ttl = ttl.min(left);
    }
    let token = state.keys.issue(
        &body.identity,
        body.name.as_deref(),
        grant,
        Duration::from_secs(ttl),
    )?;
    Ok(Json(serde_json::json!({ "token": token, "ttl_secs": ttl })))
}
