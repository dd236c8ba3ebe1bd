//! A signaling session: one WebSocket per participant (docs/protocol.md).

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use tokio::sync::mpsc;
use tracing::Instrument;
use vela_media::SignalReceiver;
use vela_media::core::{
    Joined, LeaveReason, ParticipantId, PeerKind, RoomId, SdpAnswer, SdpOffer, Signal,
};

use crate::api_error::ApiError;
use crate::hub::{CLOSE_REVOKED, ConnKind, HubMsg};
use crate::ids::{AccountId, DeviceId};
use crate::protocol::{ClientMessage, ServerMessage, parse_kind};
use crate::server::AppState;
use crate::token::Credential;

/// How long a new socket may take to send `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// `GET /ws`: upgrades to a signaling session.
pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let limit = state.config.limits.max_message_bytes;
    let tracker = state.sessions.clone();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| tracker.track_future(run(state, socket)))
}

async fn send(ws: &mut WebSocket, msg: &ServerMessage<'_>) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => ws.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn send_error(ws: &mut WebSocket, code: u16, message: &str) -> bool {
    send(ws, &ServerMessage::Error { code, message }).await
}

/// Sends a close frame.
pub(crate) async fn close(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

/// Reads the next text message; `Err` carries a close code and reason.
pub(crate) async fn next_text(ws: &mut WebSocket) -> Result<Option<String>, (u16, &'static str)> {
    loop {
        match ws.recv().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            Some(Ok(Message::Binary(_))) => {
                return Err((1003, "binary messages are not supported"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let too_big = e.to_string().to_lowercase().contains("too long")
                    || e.to_string().to_lowercase().contains("size");
                return Err(if too_big {
                    (1009, "message too big")
                } else {
                    (1002, "protocol error")
                });
            }
        }
    }
}

async fn run(state: AppState, mut ws: WebSocket) {
    // The first message must be `join`.
    let first = match tokio::time::timeout(JOIN_TIMEOUT, next_text(&mut ws)).await {
        Err(_) => return close(&mut ws, 1008, "join expected").await,
        Ok(Err((code, reason))) => return close(&mut ws, code, reason).await,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(t))) => t,
    };
    let joined = match join(&state, &first).await {
        Ok(j) => j,
        Err(e) => {
            send_error(&mut ws, e.status.as_u16(), &e.message).await;
            return close(&mut ws, 1008, "join refused").await;
        }
    };
    let (room, joined, signals, account) = joined;
    let id = joined.connection;
    let span = tracing::info_span!("session", room = %room, participant = %id);
    serve(state, ws, room, joined, signals, account)
        .instrument(span)
        .await;
}

async fn serve(
    state: AppState,
    mut ws: WebSocket,
    room: RoomId,
    joined: Joined,
    signals: SignalReceiver,
    account: Option<(AccountId, DeviceId)>,
) {
    let id = joined.connection;
    tracing::info!(identity = %joined.participant.identity, "session joined");
    // A session of a signed-in device: revoking the device or disabling the
    // account ends it, and the account shows as in a call meanwhile.
    let mut kill = account.map(|(a, d)| {
        let (registration, rx) = state.hub.register(a, d, ConnKind::Room);
        state.presence.call_started(a, d);
        (registration, rx)
    });
    if let Some((a, d)) = account
        && !matches!(
            state.store.session_state(a, d).await,
            Ok(crate::store::SessionState::Active)
        )
    {
        // Revoked between the token check and the registration.
        state.media.leave(id, LeaveReason::Removed).await;
        send(
            &mut ws,
            &ServerMessage::Left {
                reason: LeaveReason::Removed,
            },
        )
        .await;
        close(&mut ws, CLOSE_REVOKED, "session revoked").await;
        state.presence.call_ended(d);
        return;
    }
    let ok = send(
        &mut ws,
        &ServerMessage::Joined {
            room: room.as_str(),
            participant: &joined.participant,
            participants: &joined.others,
        },
    )
    .await;
    let reason = if ok {
        session_loop(
            &state,
            &mut ws,
            id,
            signals,
            kill.as_mut().map(|(_, rx)| rx),
        )
        .await
    } else {
        Some(LeaveReason::ClientLeave)
    };
    // Whatever ended the session, the participant leaves the room.
    if let Some(reason) = reason {
        state.media.leave(id, reason).await;
    }
    drop(kill);
    if let Some((_, d)) = account {
        state.presence.call_ended(d);
    }
    tracing::info!("session closed");
}

type Join = (
    RoomId,
    Joined,
    SignalReceiver,
    Option<(AccountId, DeviceId)>,
);

async fn join(state: &AppState, text: &str) -> Result<Join, ApiError> {
    let msg: ClientMessage = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("malformed message: {e}")))?;
    let ClientMessage::Join { token, name, room } = msg else {
        return Err(ApiError::bad_request("the first message must be join"));
    };
    // The room: the message's `room`, else the room token's.
    let room = match (room, state.keys.verify_credential(&token)?) {
        (Some(r), _) => r,
        (None, Credential::Room(claims)) => claims
            .video
            .room
            .ok_or_else(|| ApiError::forbidden("token names no room"))?,
        (None, Credential::Access(_)) => {
            return Err(ApiError::invalid(
                "room",
                "is required when joining with an account access token",
            ));
        }
    };
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.authorize_room(&token, &room).await?;
    let name = name
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.chars().take(64).collect::<String>())
        .unwrap_or_else(|| grant.name.clone());
    let req = grant
        .join_request(room.clone(), PeerKind::Session)
        .with_name(name);
    let (joined, signals) = state.media.join(req).await?;
    Ok((room, joined, signals, grant.account))
}

/// Runs until the session ends; returns the reason to leave the room with, or
/// `None` when the server already removed the participant.
async fn session_loop(
    state: &AppState,
    ws: &mut WebSocket,
    id: ParticipantId,
    mut signals: SignalReceiver,
    mut kill: Option<&mut mpsc::Receiver<HubMsg>>,
) -> Option<LeaveReason> {
    let mut shutdown = state.shutdown.clone();
    loop {
        let killed = async {
            match kill.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = killed => {
                // The device was signed out or the account disabled.
                let (code, reason) = match msg {
                    Some(HubMsg::Event(_)) => continue,
                    Some(HubMsg::Close { code, reason, .. }) => (code, reason),
                    None => (1011, "closed"),
                };
                state.media.leave(id, LeaveReason::Removed).await;
                send(ws, &ServerMessage::Left { reason: LeaveReason::Removed }).await;
                close(ws, code, reason).await;
                return None;
            }
            incoming = next_text(ws) => match incoming {
                Ok(Some(text)) => {
                    if let Some(reason) = handle_message(state, ws, id, &text).await {
                        return Some(reason);
                    }
                }
                Ok(None) => return Some(LeaveReason::ClientLeave),
                Err((code, reason)) => {
                    close(ws, code, reason).await;
                    return Some(LeaveReason::ClientLeave);
                }
            },
            signal = signals.recv() => {
                let Some(signal) = signal else {
                    close(ws, 1011, "media server stopped").await;
                    return None;
                };
                if let Signal::Left { reason } = signal {
                    send(ws, &ServerMessage::Left { reason }).await;
                    close(ws, 1000, "left").await;
                    return None;
                }
                if !forward_signal(ws, signal).await {
                    return Some(LeaveReason::ClientLeave);
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                // The media driver sends `left` to everyone as it shuts down.
                let wait = tokio::time::timeout(Duration::from_secs(2), signals.recv()).await;
                if let Ok(Some(Signal::Left { reason })) = wait {
                    send(ws, &ServerMessage::Left { reason }).await;
                }
                close(ws, 1001, "server shutting down").await;
                return None;
            }
        }
    }
}

async fn forward_signal(ws: &mut WebSocket, signal: Signal) -> bool {
    let msg = match &signal {
        Signal::Offer(o) => ServerMessage::Offer {
            sdp: o.to_sdp_string(),
        },
        Signal::ParticipantJoined(p) => ServerMessage::ParticipantJoined { participant: p },
        Signal::ParticipantLeft {
            participant,
            reason,
        } => ServerMessage::ParticipantLeft {
            participant_id: *participant,
            reason: *reason,
        },
        Signal::TrackPublished { participant, track } => ServerMessage::TrackPublished {
            participant_id: *participant,
            track,
        },
        Signal::TrackUnpublished { participant, track } => ServerMessage::TrackUnpublished {
            participant_id: *participant,
            track_id: *track,
        },
        Signal::TrackMuted {
            participant,
            track,
            muted,
        } => ServerMessage::TrackMuted {
            participant_id: *participant,
            track_id: *track,
            muted: *muted,
        },
        Signal::Left { reason } => ServerMessage::Left { reason: *reason },
        _ => return true,
    };
    send(ws, &msg).await
}

/// Handles one client message; returns a reason when the session is to end.
async fn handle_message(
    state: &AppState,
    ws: &mut WebSocket,
    id: ParticipantId,
    text: &str,
) -> Option<LeaveReason> {
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            send_error(ws, 400, &format!("malformed message: {e}")).await;
            return None;
        }
    };
    let result: Result<Option<ServerMessage<'static>>, ApiError> = match msg {
        ClientMessage::Join { .. } => Err(ApiError::bad_request("already joined")),
        ClientMessage::Offer { sdp } => match SdpOffer::from_sdp_string(&sdp) {
            Err(e) => Err(ApiError::bad_request(format!(
                "malformed SDP offer: {}",
                crate::whip::sdp_reason(&e)
            ))),
            Ok(offer) => state
                .media
                .offer(id, offer)
                .await
                .map(|a| {
                    Some(ServerMessage::Answer {
                        sdp: a.to_sdp_string(),
                    })
                })
                .map_err(Into::into),
        },
        ClientMessage::Answer { sdp } => match SdpAnswer::from_sdp_string(&sdp) {
            Err(e) => Err(ApiError::bad_request(format!(
                "malformed SDP answer: {}",
                crate::whip::sdp_reason(&e)
            ))),
            Ok(answer) => state
                .media
                .answer(id, answer)
                .await
                .map(|()| None)
                .map_err(Into::into),
        },
        ClientMessage::Candidate { candidate, .. } => state
            .media
            .candidate(id, candidate)
            .await
            .map(|()| None)
            .map_err(Into::into),
        ClientMessage::Mute {
            track_id,
            kind,
            muted,
        } => {
            let track = track_id.filter(|t| !t.is_empty());
            let track = match track.map(|t| t.parse()) {
                Some(Err(_)) => {
                    send_error(ws, 400, "malformed track_id").await;
                    return None;
                }
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let kind = kind.as_deref().and_then(parse_kind);
            if track.is_none() && kind.is_none() {
                send_error(ws, 400, "mute needs track_id or kind").await;
                return None;
            }
            state
                .media
                .mute(id, track, kind, muted)
                .await
                .map(|_| None)
                .map_err(Into::into)
        }
        ClientMessage::Leave => {
            state.media.leave(id, LeaveReason::ClientLeave).await;
            // The `left` signal follows from the driver and ends the loop.
            return None;
        }
        ClientMessage::Ping => Ok(Some(ServerMessage::Pong)),
    };
    match result {
        Ok(Some(reply)) => {
            if !send(ws, &reply).await {
                return Some(LeaveReason::ClientLeave);
            }
        }
        Ok(None) => {}
        Err(e) => {
            send_error(ws, e.status.as_u16(), &e.message).await;
        }
    }
    None
}
