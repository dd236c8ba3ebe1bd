//! WHIP (RFC 9725) and WHEP: one HTTP request publishes or views a room.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vela_media::core::{JoinRequest, LeaveReason, PeerKind, Permissions, RoomId, SdpOffer, Signal};

use crate::api_error::ApiError;
use crate::server::{AppState, HttpSession};

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let v = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer token",
        )
    })?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, "malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Authorization must be a Bearer token",
            )
        })
}

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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(state, path, headers, body, PeerKind::Whip).await
}

/// `POST /whep/{room}`: view.
pub(crate) async fn whep(
    state: State<AppState>,
    path: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(state, path, headers, body, PeerKind::Whep).await
}

async fn start(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    kind: PeerKind,
) -> Result<Response, ApiError> {
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let claims = state.authorize(bearer(&headers)?, &room)?;
    let offer = sdp_body(&headers, &body)?;
    let req = JoinRequest::new(room.clone(), claims.sub.clone(), kind)
        .with_name(claims.display_name())
        .with_permissions(Permissions {
            publish: claims.can_publish(),
            subscribe: claims.can_subscribe(),
        })
        .with_offer(offer);
    let (joined, mut signals) = state.media.join(req).await?;
    let id = joined.connection;
    let answer = joined
        .answer
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no answer"))?;
    state.http_sessions.lock().map_err(|_| poisoned())?.insert(
        id,
        HttpSession {
            room: room.clone(),
            identity: claims.sub.clone(),
        },
    );
    // WHIP/WHEP clients have no signaling channel: drain theirs until it ends.
    let sessions = state.http_sessions.clone();
    tokio::spawn(async move {
        while let Some(s) = signals.recv().await {
            if matches!(s, Signal::Left { .. }) {
                break;
            }
        }
        if let Ok(mut m) = sessions.lock() {
            m.remove(&id);
        }
    });
    let prefix = if kind == PeerKind::Whip {
        "whip"
    } else {
        "whep"
    };
    let location = format!("/{prefix}/{room}/{id}");
    tracing::info!(room = %room, participant = %id, identity = %claims.sub, "{prefix} session started");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, location),
        ],
        answer.to_sdp_string(),
    )
        .into_response())
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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let claims = state.authorize(bearer(&headers)?, &room)?;
    let id = session
        .parse()
        .map_err(|_| ApiError::not_found("no such session"))?;
    let s = state
        .http_sessions
        .lock()
        .map_err(|_| poisoned())?
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    if s.room != room {
        return Err(ApiError::not_found("no such session"));
    }
    if s.identity != claims.sub {
        return Err(ApiError::forbidden(
            "the session belongs to another identity",
        ));
    }
    state.media.leave(id, LeaveReason::ClientLeave).await;
    if let Ok(mut m) = state.http_sessions.lock() {
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
