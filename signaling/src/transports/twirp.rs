//! LiveKit's RoomService over Twirp, so LiveKit's server SDKs manage vela
//! (issue 20; docs/livekit.md): `POST /twirp/livekit.RoomService/<Method>`
//! with a protobuf (`application/protobuf`) or protobuf-JSON
//! (`application/json`) body, answered in the same encoding; errors are
//! Twirp's JSON, `{"code", "msg", "meta"}`, with the code's HTTP status.
//!
//! Each method decodes LiveKit's request, calls the server API's operation
//! in `http::rooms` (the same grants and checks as `/api/v1/rooms...`) and
//! encodes the answer as LiveKit's message. What vela cannot do (a request
//! field it has no equivalent for, or a method) is refused with
//! `unimplemented`, never ignored.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use livekit_protocol as lk;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vela_media::PermissionsUpdate;
use vela_media::core::{ParticipantInfo, RoomId, TrackInfo, TrackKind, TrackSource};

use crate::domain::livekit::{self as names, PARTICIPANT, TRACK};
use crate::services::room_directory::RoomHome;
use crate::transports::auth::bearer;
use crate::transports::error::ApiError;
use crate::transports::http::rooms::{self, Admin, CreateRoom, Opened};
use crate::transports::state::AppState;

/// The routes of the Twirp services.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/twirp/livekit.RoomService/{method}", post(room_service))
}

/// How a request's body, and so its answer, is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// A Twirp error: its code (which fixes the HTTP status) and message.
#[derive(Debug)]
struct TwirpError {
    code: &'static str,
    msg: String,
    /// The request field at fault, as `meta.field`.
    field: Option<String>,
    retry_after: Option<u64>,
}

impl TwirpError {
    fn new(code: &'static str, msg: impl Into<String>) -> Self {
        TwirpError {
            code,
            msg: msg.into(),
            field: None,
            retry_after: None,
        }
    }

    /// A request vela cannot carry out as LiveKit would.
    fn unimplemented(msg: impl Into<String>) -> Self {
        Self::new("unimplemented", msg)
    }

    /// A request field set to something vela has no equivalent for.
    fn unsupported(field: &str, why: &str) -> Self {
        let mut e = Self::unimplemented(format!("{field}: {why}"));
        e.field = Some(field.to_owned());
        e
    }

    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "malformed" | "out_of_range" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" | "bad_route" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "canceled" | "deadline_exceeded" => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApiError> for TwirpError {
    /// The server API's error as the Twirp code of its status.
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_argument",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "aborted",
            StatusCode::TOO_MANY_REQUESTS => "resource_exhausted",
            StatusCode::NOT_IMPLEMENTED => "unimplemented",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        TwirpError {
            code,
            msg: e.message,
            field: e.field,
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "code": self.code, "msg": self.msg });
        let status = self.status();
        if let Some(field) = self.field {
            body["meta"] = serde_json::json!({ "field": field });
        }
        let mut r = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// The encoding a request's `Content-Type` names (parameters ignored).
fn encoding(headers: &HeaderMap) -> Result<Encoding, TwirpError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match ct.split(';').next().map(str::trim) {
        Some("application/protobuf") => Ok(Encoding::Protobuf),
        Some("application/json") => Ok(Encoding::Json),
        _ => Err(TwirpError::new(
            "bad_route",
            format!("unexpected Content-Type {ct:?}: application/protobuf or application/json"),
        )),
    }
}

/// Decodes a request message.
fn decode<T: prost::Message + Default + DeserializeOwned>(
    enc: Encoding,
    body: &[u8],
) -> Result<T, TwirpError> {
    match enc {
        Encoding::Protobuf => T::decode(body)
            .map_err(|e| TwirpError::new("malformed", format!("the protobuf body: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| TwirpError::new("malformed", format!("the JSON body: {e}"))),
    }
}

/// Encodes an answer: protobuf, or protobuf's JSON mapping with the proto
/// field names (Twirp's default), default values left out.
fn encode<T: prost::Message + Serialize>(enc: Encoding, msg: &T) -> Response {
    match enc {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/protobuf")],
            msg.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => match serde_json::to_value(msg) {
            Ok(v) => axum::Json(proto_names(v)).into_response(),
            Err(e) => TwirpError::from(ApiError::internal(e)).into_response(),
        },
    }
}

/// The lowerCamelCase keys of protobuf's JSON mapping as the proto field
/// names (`numParticipants` -> `num_participants`). Only message fields are
/// renamed this way: vela answers no map fields (whose keys are data).
fn proto_names(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let mut snake = String::with_capacity(k.len() + 4);
                    for c in k.chars() {
                        if c.is_ascii_uppercase() {
                            snake.push('_');
                            snake.push(c.to_ascii_lowercase());
                        } else {
                            snake.push(c);
                        }
                    }
                    (snake, proto_names(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(proto_names).collect()),
        other => other,
    }
}

/// `POST /twirp/livekit.RoomService/{method}`.
async fn room_service(
    State(state): State<AppState>,
    Path(method): Path<String>,
    OriginalUri(uri): OriginalUri,
    admin: Result<Admin, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match dispatch(&state, &method, &uri, admin, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            // What vela cannot do is worth an operator's notice; the
            // caller's mistakes are not.
            if e.code == "unimplemented" {
                tracing::info!(method, msg = e.msg, "twirp request refused: unimplemented");
            } else {
                tracing::debug!(method, code = e.code, msg = e.msg, "twirp request refused");
            }
            e.into_response()
        }
    }
}

/// The methods of LiveKit's RoomService vela has no equivalent for.
const UNIMPLEMENTED: &[(&str, &str)] = &[
    (
        "UpdateRoomMetadata",
        "vela sets a room's metadata when it is created only",
    ),
    (
        "ForwardParticipant",
        "vela does not forward participants between rooms",
    ),
    (
        "MoveParticipant",
        "vela does not move participants between rooms",
    ),
    (
        "PerformRpc",
        "vela has no participant RPC (LiveKit's signal protocol is not served yet)",
    ),
];

async fn dispatch(
    state: &AppState,
    method: &str,
    uri: &Uri,
    admin: Result<Admin, ApiError>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TwirpError> {
    const KNOWN: &[&str] = &[
        "CreateRoom",
        "ListRooms",
        "DeleteRoom",
        "ListParticipants",
        "GetParticipant",
        "RemoveParticipant",
        "MutePublishedTrack",
        "UpdateParticipant",
        "UpdateSubscriptions",
        "SendData",
    ];
    if let Some((_, why)) = UNIMPLEMENTED.iter().find(|(m, _)| *m == method) {
        return Err(TwirpError::unimplemented(format!("{method}: {why}")));
    }
    if !KNOWN.contains(&method) {
        return Err(TwirpError::new(
            "bad_route",
            format!("no method {method} in livekit.RoomService"),
        ));
    }
    let enc = encoding(headers)?;
    let admin = admin?;
    let body = body.map_err(|e| {
        let mut err = TwirpError::new("malformed", e.body_text());
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            err.code = "invalid_argument";
        }
        err
    })?;
    match method {
        "CreateRoom" => {
            let req: lk::CreateRoomRequest = decode(enc, &body)?;
            create_room_unsupported(&req)?;
            let create = CreateRoom {
                name: req.name,
                max_participants: Some(req.max_participants),
                // 0 (unset) is the default timeout, as in LiveKit.
                empty_timeout: (req.empty_timeout > 0).then_some(u64::from(req.empty_timeout)),
                metadata: Some(req.metadata),
            };
            match rooms::open_room(state, &admin, uri, create).await? {
                Opened::Here(info) => {
                    let room = serde_json::to_value(info).map_err(ApiError::internal)?;
                    Ok(encode(enc, &room_of(&room)))
                }
                Opened::Elsewhere(redirect) => Ok(redirect),
            }
        }
        "ListRooms" => {
            let req: lk::ListRoomsRequest = decode(enc, &body)?;
            let names = (!req.names.is_empty()).then(|| req.names.join(","));
            let (list, unreachable) =
                rooms::list_rooms(state, &admin, bearer(headers)?, names.as_deref(), false).await?;
            if !unreachable.is_empty() {
                tracing::warn!(?unreachable, "ListRooms: nodes did not answer");
            }
            let rooms = list.iter().map(room_of).collect();
            Ok(encode(enc, &lk::ListRoomsResponse { rooms }))
        }
        "DeleteRoom" => {
            let req: lk::DeleteRoomRequest = decode(enc, &body)?;
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            rooms::delete_room(state, &admin, bearer(headers)?, &req.room, false).await?;
            Ok(encode(enc, &lk::DeleteRoomResponse {}))
        }
        "ListParticipants" => {
            let req: lk::ListParticipantsRequest = decode(enc, &body)?;
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            let list = rooms::list_participants(state, &admin, &req.room).await?;
            let participants = list.iter().map(participant_of).collect();
            Ok(encode(enc, &lk::ListParticipantsResponse { participants }))
        }
        "GetParticipant" => {
            let req: lk::RoomParticipantIdentity = decode(enc, &body)?;
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            let p = rooms::get_participant(state, &admin, &req.room, &req.identity).await?;
            Ok(encode(enc, &participant_of(&p)))
        }
        "RemoveParticipant" => {
            let req: lk::RoomParticipantIdentity = decode(enc, &body)?;
            if req.revoke_token_ts != 0 {
                return Err(TwirpError::unsupported(
                    "revoke_token_ts",
                    "vela cannot revoke room tokens; give short-lived ones",
                ));
            }
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            rooms::remove_participant(state, &admin, &req.room, &req.identity).await?;
            Ok(encode(enc, &lk::RemoveParticipantResponse {}))
        }
        "MutePublishedTrack" => {
            let req: lk::MuteRoomTrackRequest = decode(enc, &body)?;
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            let track = names::vela_id(&req.track_sid, TRACK);
            let t = rooms::mute_track(state, &admin, &req.room, &req.identity, &track, req.muted)
                .await?;
            let track = Some(track_of(&t));
            Ok(encode(enc, &lk::MuteRoomTrackResponse { track }))
        }
        "UpdateParticipant" => {
            let req: lk::UpdateParticipantRequest = decode(enc, &body)?;
            let update = permissions_update(&req)?;
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            let p = match update {
                Some(u) => {
                    rooms::update_permissions(state, &admin, &req.room, &req.identity, u).await?
                }
                None => rooms::get_participant(state, &admin, &req.room, &req.identity).await?,
            };
            Ok(encode(enc, &participant_of(&p)))
        }
        "UpdateSubscriptions" => {
            let _: lk::UpdateSubscriptionsRequest = decode(enc, &body)?;
            Err(TwirpError::unimplemented(
                "UpdateSubscriptions: vela subscribes every participant to every track \
                 (it may stop receiving altogether: UpdateParticipant with \
                 permission.can_subscribe false)",
            ))
        }
        "SendData" => {
            let req: lk::SendDataRequest = decode(enc, &body)?;
            #[allow(deprecated)] // Read to refuse it, not to use it.
            if !req.destination_sids.is_empty() {
                return Err(TwirpError::unsupported(
                    "destination_sids",
                    "name the recipients by destination_identities",
                ));
            }
            if let Some(r) = elsewhere(state, &req.room, uri).await {
                return Ok(r);
            }
            let payload: Arc<[u8]> = req.data.into();
            let n = rooms::send_room_data(
                state,
                &admin,
                &req.room,
                payload,
                req.topic,
                req.destination_identities,
            )
            .await?;
            tracing::debug!(room = req.room, recipients = n, "twirp SendData");
            Ok(encode(enc, &lk::SendDataResponse {}))
        }
        _ => Err(TwirpError::new("bad_route", format!("no method {method}"))),
    }
}

/// Refuses the options of `CreateRoom` that vela has no equivalent for.
fn create_room_unsupported(req: &lk::CreateRoomRequest) -> Result<(), TwirpError> {
    let set: [(&str, bool); 10] = [
        ("room_preset", !req.room_preset.is_empty()),
        ("departure_timeout", req.departure_timeout != 0),
        ("node_id", !req.node_id.is_empty()),
        ("tags", !req.tags.is_empty()),
        ("egress", req.egress.is_some()),
        ("min_playout_delay", req.min_playout_delay != 0),
        ("max_playout_delay", req.max_playout_delay != 0),
        ("sync_streams", req.sync_streams),
        ("replay_enabled", req.replay_enabled),
        ("agents", !req.agents.is_empty()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(TwirpError::unsupported(
            field,
            "vela has no such room option (docs/livekit.md)",
        )),
        None => Ok(()),
    }
}

/// The permissions `UpdateParticipant` sets (`None`: it changes nothing);
/// what vela cannot change is refused before anything is.
fn permissions_update(
    req: &lk::UpdateParticipantRequest,
) -> Result<Option<PermissionsUpdate>, TwirpError> {
    let unsupported = "vela keeps a participant's name from its token and has no \
                       participant metadata or attributes; only permission can change";
    if !req.metadata.is_empty() {
        return Err(TwirpError::unsupported("metadata", unsupported));
    }
    if !req.name.is_empty() {
        return Err(TwirpError::unsupported("name", unsupported));
    }
    if !req.attributes.is_empty() {
        return Err(TwirpError::unsupported("attributes", unsupported));
    }
    let Some(p) = &req.permission else {
        return Ok(None);
    };
    if !p.can_publish_sources.is_empty() {
        return Err(TwirpError::unsupported(
            "permission.can_publish_sources",
            "vela grants publishing whatever the source",
        ));
    }
    if p.hidden {
        return Err(TwirpError::unsupported(
            "permission.hidden",
            "vela has no hidden participants",
        ));
    }
    // As in LiveKit, the permission given replaces the one held.
    Ok(Some(PermissionsUpdate {
        publish: Some(p.can_publish),
        subscribe: Some(p.can_subscribe),
        publish_data: Some(p.can_publish_data),
    }))
}

/// A room open on another node of the cluster is operated there: the
/// redirect (307, the same path on its node) that says so.
async fn elsewhere(state: &AppState, room: &str, uri: &Uri) -> Option<Response> {
    state.nodes.as_ref()?;
    let room = RoomId::new(room).ok()?;
    match state.rooms.lookup(&room).await {
        Ok(Some(RoomHome::Elsewhere { node, public_url })) => Some(
            crate::transports::cluster::redirect(state, &public_url, &node, uri),
        ),
        _ => None,
    }
}

/// A room of the server API (its JSON: rooms of other nodes come as JSON)
/// as LiveKit's `Room`.
fn room_of(r: &serde_json::Value) -> lk::Room {
    let name = r["name"].as_str().unwrap_or_default().to_owned();
    let count = |k: &str| u32::try_from(r[k].as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
    let age = r["age_secs"].as_u64().unwrap_or(0);
    let now = crate::services::token::now_secs();
    let created = i64::try_from(now.saturating_sub(age)).unwrap_or(0);
    lk::Room {
        sid: names::room_sid(&name),
        empty_timeout: u32::try_from(r["empty_timeout_secs"].as_u64().unwrap_or(0))
            .unwrap_or(u32::MAX),
        max_participants: count("max_participants"),
        creation_time: created,
        creation_time_ms: created.saturating_mul(1000),
        metadata: r["metadata"].as_str().unwrap_or_default().to_owned(),
        num_participants: count("num_participants"),
        num_publishers: count("num_publishers"),
        name,
        ..lk::Room::default()
    }
}

/// A participant as LiveKit's `ParticipantInfo`: the server API lists
/// participants whose media is connected, so each is `ACTIVE`.
pub(crate) fn participant_of(p: &ParticipantInfo) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: names::sid(&p.id.to_string(), PARTICIPANT),
        identity: p.identity.clone(),
        state: lk::participant_info::State::Active as i32,
        tracks: p.tracks.iter().map(track_of).collect(),
        name: p.name.clone(),
        permission: Some(lk::ParticipantPermission {
            can_subscribe: p.permissions.subscribe,
            can_publish: p.permissions.publish,
            can_publish_data: p.permissions.publish_data,
            ..lk::ParticipantPermission::default()
        }),
        is_publisher: !p.tracks.is_empty(),
        kind: lk::participant_info::Kind::Standard as i32,
        ..lk::ParticipantInfo::default()
    }
}

/// A published track as LiveKit's `TrackInfo`.
fn track_of(t: &TrackInfo) -> lk::TrackInfo {
    let kind = match t.kind {
        TrackKind::Audio => lk::TrackType::Audio,
        TrackKind::Video => lk::TrackType::Video,
    };
    let source = match t.source {
        TrackSource::Camera => lk::TrackSource::Camera,
        TrackSource::Microphone => lk::TrackSource::Microphone,
        TrackSource::Screen => lk::TrackSource::ScreenShare,
        TrackSource::ScreenAudio => lk::TrackSource::ScreenShareAudio,
    };
    lk::TrackInfo {
        sid: names::sid(&t.id.to_string(), TRACK),
        r#type: kind as i32,
        source: source as i32,
        muted: t.muted,
        ..lk::TrackInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vela_media::core::TrackId;

    #[test]
    fn json_answers_use_the_proto_field_names() {
        let room = lk::Room {
            name: "a".into(),
            num_participants: 2,
            creation_time_ms: 5,
            ..lk::Room::default()
        };
        let v = proto_names(serde_json::to_value(&room).unwrap_or_default());
        assert_eq!(v["name"], "a");
        assert_eq!(v["num_participants"], 2);
        // int64 is a string in protobuf's JSON mapping.
        assert_eq!(v["creation_time_ms"], "5");
        let track = track_of(&TrackInfo {
            id: TrackId(4),
            kind: TrackKind::Video,
            muted: true,
            source: TrackSource::Screen,
        });
        let v = proto_names(serde_json::to_value(&track).unwrap_or_default());
        assert_eq!(v["sid"], "TR_4");
        assert_eq!(v["type"], "VIDEO");
        assert_eq!(v["source"], "SCREEN_SHARE");
        assert_eq!(v["muted"], true);
    }

    #[test]
    fn json_requests_take_either_field_name() {
        for body in [
            r#"{"room":"r","identity":"a","track_sid":"TR_1","muted":true}"#,
            r#"{"room":"r","identity":"a","trackSid":"TR_1","muted":true,"extra":1}"#,
        ] {
            let m: lk::MuteRoomTrackRequest =
                decode(Encoding::Json, body.as_bytes()).unwrap_or_default();
            assert_eq!(m.track_sid, "TR_1", "{body}");
            assert!(m.muted, "{body}");
        }
        let e = decode::<lk::MuteRoomTrackRequest>(Encoding::Json, b"{nope").unwrap_err();
        assert_eq!(e.code, "malformed");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_server_apis_errors_keep_their_meaning() {
        let e = TwirpError::from(ApiError::not_found("no room x"));
        assert_eq!((e.code, e.status()), ("not_found", StatusCode::NOT_FOUND));
        let e = TwirpError::from(ApiError::forbidden("no"));
        assert_eq!(e.code, "permission_denied");
        let e = TwirpError::from(ApiError::unauthorized("no"));
        assert_eq!(e.code, "unauthenticated");
        let e = TwirpError::from(ApiError::invalid("name", "bad"));
        assert_eq!(e.code, "invalid_argument");
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(
            TwirpError::unimplemented("x").status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
