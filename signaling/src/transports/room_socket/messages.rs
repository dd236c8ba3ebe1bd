//! A joined session's traffic: signals from the media core forwarded to the
//! client, and the client's messages (offers, answers, candidates, mute,
//! track settings, data) carried out.

use super::*;

pub(super) async fn forward_signal(
    ws: &mut WebSocket,
    signal: Signal,
    pending_offer: &mut Option<String>,
) -> bool {
    let speakers;
    let qualities;
    let msg = match &signal {
        Signal::Offer(o) => {
            let sdp = o.to_sdp_string();
            *pending_offer = Some(sdp.clone());
            ServerMessage::Offer { sdp }
        }
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
            kind,
            source,
            muted,
        } => ServerMessage::TrackMuted {
            participant_id: *participant,
            track_id: *track,
            kind: *kind,
            source: *source,
            muted: *muted,
        },
        Signal::ConnectionQuality(list) => {
            qualities = list
                .iter()
                .map(|q| QualityEntry {
                    participant_id: q.participant,
                    quality: q.quality,
                    score: q.score,
                })
                .collect();
            ServerMessage::ConnectionQuality { updates: qualities }
        }
        Signal::LayersNeeded { track, rids } => ServerMessage::LayersNeeded {
            track_id: *track,
            rids,
        },
        Signal::ActiveSpeakers(list) => {
            speakers = list
                .iter()
                .map(|s| SpeakerEntry {
                    participant_id: s.participant,
                    level: s.level,
                })
                .collect();
            ServerMessage::ActiveSpeakers { speakers }
        }
        Signal::Left { reason } => ServerMessage::Left { reason: *reason },
        Signal::Data {
            from,
            topic,
            payload,
        } => {
            use base64::Engine as _;
            ServerMessage::Data {
                participant_id: *from,
                topic: topic.as_deref(),
                payload: base64::engine::general_purpose::STANDARD.encode(payload),
            }
        }
        Signal::PermissionsChanged(p) => ServerMessage::PermissionsChanged { permissions: *p },
        _ => return true,
    };
    send(ws, &msg).await
}

/// Handles one client message; returns a reason when the session is to end.
pub(super) async fn handle_message(
    state: &AppState,
    ws: &mut WebSocket,
    id: ConnectionId,
    text: &str,
    pending_offer: &mut Option<String>,
    data: &mut DataAllowance,
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
        ClientMessage::Offer { sdp, sources } => match (
            SdpOffer::from_sdp_string(&sdp),
            super::protocol::parse_sources(&sources),
        ) {
            (Err(e), _) => Err(ApiError::bad_request(format!(
                "malformed SDP offer: {}",
                crate::transports::whip::sdp_reason(&e)
            ))),
            (_, Err(e)) => Err(ApiError::bad_request(format!("bad sources: {e}"))),
            (Ok(offer), Ok(sources)) => state
                .media
                .offer_with_sources(id, offer, sources)
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
                crate::transports::whip::sdp_reason(&e)
            ))),
            Ok(answer) => state
                .media
                .answer(id, answer)
                .await
                .map(|()| {
                    *pending_offer = None;
                    None
                })
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
        ClientMessage::Data {
            payload,
            topic,
            destination_identities,
        } => send_data(state, id, payload, topic, destination_identities, data).await,
        ClientMessage::Resume { .. } => Err(ApiError::bad_request("already joined")),
        ClientMessage::TrackSettings {
            track_id,
            enabled,
            width,
            height,
        } => match track_id.parse() {
            Err(_) => Err(ApiError::bad_request("malformed track_id")),
            Ok(track) => state
                .media
                .track_settings(
                    id,
                    track,
                    TrackSettings {
                        enabled,
                        width,
                        height,
                    },
                )
                .await
                .map(|()| None)
                .map_err(Into::into),
        },
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

/// Largest data message payload, after base64 decoding.
pub(crate) const MAX_DATA_BYTES: usize = 16 * 1024;

/// Decodes a data message's payload (base64) and checks its size.
pub(crate) fn decode_payload(payload: &str) -> Result<std::sync::Arc<[u8]>, ApiError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| ApiError::invalid("payload", "is not base64"))?;
    if bytes.len() > MAX_DATA_BYTES {
        return Err(ApiError::invalid(
            "payload",
            format!("is larger than {MAX_DATA_BYTES} bytes"),
        ));
    }
    Ok(bytes.into())
}

/// A participant's data message to the others in its room.
async fn send_data(
    state: &AppState,
    id: ConnectionId,
    payload: String,
    topic: Option<String>,
    destinations: Vec<String>,
    allowance: &mut DataAllowance,
) -> Result<Option<ServerMessage<'static>>, ApiError> {
    let payload = decode_payload(&payload)?;
    if !allowance.take(payload.len()) {
        let mut e = ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "data messages over the limit (limits.data_messages_per_second, limits.data_bytes_per_second): dropped",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let message = vela_media::core::DataMessage {
        topic: topic.filter(|t| !t.is_empty()).map(std::sync::Arc::from),
        payload,
        destinations,
    };
    state.media.send_data_from(id, message).await?;
    Ok(None)
}
