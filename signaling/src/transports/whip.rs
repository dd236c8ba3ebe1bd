//! WHIP (RFC 9725) and WHEP: one HTTP request publishes or views a room.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vela_media::core::{LeaveReason, PeerKind, RoomId, SdpOffer, Signal};

use crate::domain::ice::link_headers;
use crate::services::hub::HubMsg;
use crate::services::lease::DeviceLease;
use crate::services::room_directory::RoomHome;
use crate::transports::auth::bearer;
use crate::transports::cluster::redirect;
use crate::transports::error::ApiError;
use crate::transports::state::{AppState, WhipSession};

fn sdp_body(headers: &HeaderMap, body: &Bytes) -> Result<SdpOffer, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.trim().starts_with("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/sdp",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("SDP is not UTF-8"))?;
    SdpOffer::from_sdp_string(text)
        .map_err(|e| ApiError::bad_request(format!("malformed SDP offer: {}", sdp_reason(&e))))
}

/// The parser's message without its internal pointer offsets.
pub(crate) fn sdp_reason(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .filter(|l| !l.contains("PointerOffset") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `POST /whip/{room}`: publish.
pub(crate) async fn whip(
    state: State<AppState>,
    path: Path<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(state, path, uri, headers, body, PeerKind::Whip).await
}

/// `POST /whep/{room}`: view.
pub(crate) async fn whep(
    state: State<AppState>,
    path: Path<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(state, path, uri, headers, body, PeerKind::Whep).await
}

async fn start(
    State(state): State<AppState>,
    Path(room): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
    kind: PeerKind,
) -> Result<Response, ApiError> {
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.authorize_room(bearer(&headers)?, &room).await?;
    // Served here only where the directory says so; else the client
    // repeats the request at the room's node (RFC 9725's 307).
    if let RoomHome::Elsewhere { node, public_url } = state.rooms.home(&room).await? {
        return Ok(redirect(&state, &public_url, &node, &uri));
    }
    crate::transports::auth::room_access(&state, room.as_str(), grant.account, None).await?;
    let offer = sdp_body(&headers, &body)?;
    let req = grant.join_request(room.clone(), kind).with_offer(offer);
    let (joined, mut signals) = state.media.join(req).await?;
    let id = joined.connection;
    let answer = joined
        .answer
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no answer"))?;
    state.whip_sessions.lock().map_err(|_| poisoned())?.insert(
        id,
        WhipSession {
            room: room.clone(),
            owner: grant.owner(),
        },
    );
    // A signed-in device's session ends when the device is signed out or
    // the account disabled, and shows the account as in a call meanwhile.
    let mut lease = grant
        .account
        .map(|(a, d)| DeviceLease::take(&state.hub, &state.presence, a, d));
    // WHIP/WHEP clients have no signaling channel: drain theirs until it ends.
    let sessions = state.whip_sessions.clone();
    let media = state.media.clone();
    tokio::spawn(async move {
        loop {
            let killed = DeviceLease::next_order(lease.as_mut());
            tokio::select! {
                s = signals.recv() => match s {
                    None | Some(Signal::Left { .. }) => break,
                    Some(_) => {}
                },
                msg = killed => {
                    if !matches!(msg, Some(HubMsg::Event(_))) {
                        media.leave(id, LeaveReason::Removed).await;
                        break;
                    }
                }
            }
        }
        // Unregistered, and out of the call in presence.
        drop(lease);
        if let Ok(mut m) = sessions.lock() {
            m.remove(&id);
        }
    });
    let prefix = if kind == PeerKind::Whip {
        "whip"
    } else {
        "whep"
    };
    // In a cluster, absolute: the session lives on this node, whichever
    // node the client first asked.
    let base = state
        .cluster
        .as_ref()
        .map_or("", |c| c.node().public_url.as_str());
    let location = format!("{base}/{prefix}/{room}/{id}");
    tracing::info!(room = %room, participant = %id, identity = %grant.identity, "{prefix} session started");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    headers.insert(header::LOCATION, header_value(&location)?);
    // The STUN/TURN servers the client may use (RFC 9725): it reaches a
    // relay only if it gathers after reading them (the page sets its local
    // description once the answer is in).
    for link in link_headers(&state.ice_servers_for(&joined.participant.id)) {
        headers.append(header::LINK, header_value(&link)?);
    }
    Ok((StatusCode::CREATED, headers, answer.to_sdp_string()).into_response())
}

/// A header value of text the server made (a URL, a Link).
fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a response header could not be encoded",
        )
    })
}

fn poisoned() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "session table unavailable",
    )
}

/// `DELETE /whip/{room}/{session}` (and WHEP): end the session.
pub(crate) async fn end(
    State(state): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.authorize_room(bearer(&headers)?, &room).await?;
    let id = session
        .parse()
        .map_err(|_| ApiError::not_found("no such session"))?;
    let found = state
        .whip_sessions
        .lock()
        .map_err(|_| poisoned())?
        .get(&id)
        .cloned();
    let s = match found {
        Some(s) => s,
        None => {
            // A session of a room served elsewhere: its node ends it.
            if let Ok(Some(RoomHome::Elsewhere { node, public_url })) =
                state.rooms.lookup(&room).await
            {
                return Ok(redirect(&state, &public_url, &node, &uri));
            }
            return Err(ApiError::not_found("no such session"));
        }
    };
    if s.room != room {
        return Err(ApiError::not_found("no such session"));
    }
    if s.owner != grant.owner() {
        return Err(ApiError::forbidden(
            "the session belongs to another identity",
        ));
    }
    state.media.leave(id, LeaveReason::ClientLeave).await;
    if let Ok(mut m) = state.whip_sessions.lock() {
        m.remove(&id);
    }
    Ok(StatusCode::OK.into_response())
}

/// `PATCH` (trickle ICE or ICE restart): not supported; the server is ICE-lite
/// and learns the client's address from its checks.
pub(crate) async fn patch() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE")],
        "trickle ICE and ICE restart are not supported on this resource",
    )
        .into_response()
}
