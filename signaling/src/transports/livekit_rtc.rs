//! LiveKit's signal protocol v0 at `/rtc` (issue 20; docs/livekit.md), so
//! LiveKit's client SDKs join vela rooms: a WebSocket of binary protobuf
//! `SignalRequest`s in and `SignalResponse`s out, over the same room
//! service as vela's own socket (the token checks, the directory, call
//! rooms, the media core's join): no second implementation of rooms.
//!
//! LiveKit gives each participant two peer connections, a publisher (the
//! client offers) and a subscriber (the server offers). Here they are two
//! core connections: the publisher is the participant (joined without
//! subscribing, so the core never offers on it), the subscriber a second,
//! receive-only connection of it (`JoinRequest::receiving_for`): hidden
//! from the room, the server offers on it at once (with LiveKit's
//! `_reliable` and `_lossy` data channels, so there is an offer to make in
//! an empty room) and again as tracks come and go, its msids spelled
//! `PA_<n>|TR_<n>` as LiveKit's SDKs map received tracks. A request vela
//! does not carry out is refused (logged, and answered with a
//! `RequestResponse`), never left hanging.
//!
//! `/rtc/v1` (LiveKit's single-connection protocol) is 404 on purpose, so
//! SDKs that try it first fall back to v0.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use livekit_protocol as lk;
use lk::signal_request::Message as Req;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use tracing::Instrument;
use vela_media::SignalReceiver;
use vela_media::core::{
    ChannelConfig, ConnectionId, LeaveReason, ParticipantId, ParticipantInfo, PeerKind,
    Permissions, Reliability, RoomId, SdpAnswer, SdpOffer, Signal, TrackId, TrackKind,
    TrackSettings, TrackSource,
};

use crate::domain::livekit::{self as names, PARTICIPANT, TRACK};
use crate::services::room_directory::RoomHome;
use crate::services::token::Credential;
use crate::transports::auth::{RoomGrant, bearer};
use crate::transports::error::ApiError;
use crate::transports::room_socket::{DataAllowance, MAX_DATA_BYTES};
use crate::transports::state::AppState;
use crate::transports::twirp::participant_of;
use crate::transports::ws::{WRITE_TIMEOUT, close, limited};

/// How often the client pings, in seconds (LiveKit's default).
const PING_INTERVAL_SECS: i32 = 5;
/// How long without a message from the client before the session ends, in
/// seconds (LiveKit's default); both must be above zero (the Rust SDK
/// builds an interval from the first).
const PING_TIMEOUT_SECS: i32 = 15;

/// The subscriber connection's data channels, as LiveKit's server opens
/// them: `_reliable` (ordered, retransmitted) and `_lossy` (unordered, no
/// retransmits).
fn subscriber_channels() -> Vec<ChannelConfig> {
    vec![
        ChannelConfig {
            label: "_reliable".into(),
            ..ChannelConfig::default()
        },
        ChannelConfig {
            label: "_lossy".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..ChannelConfig::default()
        },
    ]
}

/// The msid of a track offered on the subscriber connection: stream id
/// `PA_<n>|TR_<n>`, track id `TR_<n>` (LiveKit's SDKs split the stream id
/// on `|` to find the publication).
fn stream_ids(p: ParticipantId, t: TrackId) -> (String, String) {
    let track = names::sid(&t.to_string(), TRACK);
    (
        format!("{}|{track}", names::sid(&p.to_string(), PARTICIPANT)),
        track,
    )
}

/// The routes of LiveKit's signal protocol.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/rtc", get(upgrade))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", any(v1))
        .route("/rtc/v1/validate", any(v1))
}

/// `/rtc/v1...`: LiveKit's single-connection protocol, not spoken here. The
/// body must not say "requested room does not exist", or the JS SDK would
/// not fall back to v0.
async fn v1() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the single-connection signal protocol (v1) is not supported; use /rtc",
    )
        .into_response()
}

/// The token: the `access_token` query parameter (LiveKit's JS SDK), else
/// `Authorization: Bearer` (its Rust core, under the Python SDK).
fn token<'a>(
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
) -> Result<&'a str, ApiError> {
    match query.get("access_token").filter(|t| !t.is_empty()) {
        Some(t) => Ok(t),
        None => bearer(headers),
    }
}

/// A LiveKit token names its room: checked for joining it (with the same
/// grants and call-room rules as vela's socket).
async fn authorize(
    state: &AppState,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(RoomId, RoomGrant), ApiError> {
    let token = token(query, headers)?;
    let room = match state.keys.verify_credential(token)? {
        Credential::Room(claims) => claims
            .video
            .room
            .ok_or_else(|| ApiError::forbidden("token names no room"))?,
        Credential::Access(_) => {
            return Err(ApiError::forbidden(
                "LiveKit clients join with a room token (an account access token names no room)",
            ));
        }
    };
    let room = RoomId::new(&room).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let grant = state.authorize_room(token, &room).await?;
    crate::transports::auth::room_access(state, room.as_str(), grant.account, None).await?;
    Ok((room, grant))
}

/// `GET /rtc/validate`: 200 for a token that may join its room.
async fn validate(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &query, &headers).await?;
    Ok((StatusCode::OK, "success").into_response())
}

/// `GET /rtc`: checks the token, then upgrades to a signal session.
async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (room, grant) = authorize(&state, &query, &headers).await?;
    // Another node's room: vela's socket is proxied there; not yet this one.
    if let RoomHome::Elsewhere { node, .. } = state.rooms.home(&room).await? {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("room {room} is served by node {node}; /rtc is not proxied between nodes yet"),
        ));
    }
    let tracker = state.socket_tasks.clone();
    Ok(limited(ws, &state).on_upgrade(move |socket| {
        let span = tracing::info_span!("livekit", %room, identity = %grant.identity);
        tracker.track_future(run(state, socket, room, grant).instrument(span))
    }))
}

/// Sends one `SignalResponse` within the write timeout; `false` when the
/// socket is gone or too slow.
async fn send(ws: &mut WebSocket, msg: Resp) -> bool {
    let bytes = lk::SignalResponse { message: Some(msg) }.encode_to_vec();
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Binary(bytes.into()))).await,
        Ok(Ok(()))
    )
}

/// LiveKit's `leave`, as the server sends it: disconnect, with the reason.
fn leave_message(reason: LeaveReason) -> Resp {
    use lk::DisconnectReason as D;
    let reason = match reason {
        LeaveReason::ClientLeave => D::ClientInitiated,
        LeaveReason::DuplicateIdentity | LeaveReason::HandedOver => D::DuplicateIdentity,
        LeaveReason::ConnectionLost | LeaveReason::TooSlow => D::ConnectionTimeout,
        LeaveReason::Removed => D::ParticipantRemoved,
        LeaveReason::ServerShutdown => D::ServerShutdown,
        LeaveReason::RoomDeleted => D::RoomDeleted,
    };
    Resp::Leave(lk::LeaveRequest {
        reason: reason as i32,
        action: lk::leave_request::Action::Disconnect as i32,
        ..lk::LeaveRequest::default()
    })
}

/// The others in the room as this session last told the client, so that
/// an update (a track, a leave) can carry the participant whole, as LiveKit
/// sends it.
#[derive(Default)]
struct Roster {
    others: HashMap<ParticipantId, ParticipantInfo>,
}

impl Roster {
    /// An update of one participant, `state` its LiveKit state.
    fn update(info: &ParticipantInfo, state: lk::participant_info::State) -> Resp {
        let mut p = participant_of(info);
        p.state = state as i32;
        Resp::Update(lk::ParticipantUpdate {
            participants: vec![p],
        })
    }

    /// What a core signal about the others tells the client, if anything.
    fn apply(&mut self, signal: &Signal) -> Option<Resp> {
        use lk::participant_info::State;
        match signal {
            Signal::ParticipantJoined(p) => {
                self.others.insert(p.id, p.clone());
                Some(Self::update(p, State::Active))
            }
            Signal::ParticipantLeft { participant, .. } => {
                let p = self.others.remove(participant)?;
                Some(Self::update(&p, State::Disconnected))
            }
            Signal::TrackPublished { participant, track } => {
                let p = self.others.get_mut(participant)?;
                p.tracks.retain(|t| t.id != track.id);
                p.tracks.push(track.clone());
                Some(Self::update(p, State::Active))
            }
            Signal::TrackUnpublished { participant, track } => {
                let p = self.others.get_mut(participant)?;
                p.tracks.retain(|t| t.id != *track);
                Some(Self::update(p, State::Active))
            }
            Signal::TrackMuted {
                participant,
                track,
                muted,
                ..
            } => {
                let p = self.others.get_mut(participant)?;
                let t = p.tracks.iter_mut().find(|t| t.id == *track)?;
                t.muted = *muted;
                Some(Self::update(p, State::Active))
            }
            _ => None,
        }
    }
}

async fn run(state: AppState, mut ws: WebSocket, room: RoomId, grant: RoomGrant) {
    // The core peer is the publisher connection only (see the module's
    // comment): joined without subscribing, so the core never offers on it.
    let req = grant
        .join_request(room.clone(), PeerKind::Session)
        .with_permissions(Permissions {
            subscribe: false,
            ..grant.permissions
        });
    let (joined, signals) = match state.media.join(req).await {
        Ok(j) => j,
        Err(e) => return refuse_join(&mut ws, e.into()).await,
    };
    let id = joined.connection;
    // The subscriber connection, if the token may subscribe: its first
    // offer waits in its signals until the join response is out.
    let subscriber = if grant.permissions.subscribe {
        let req = grant
            .join_request(room.clone(), PeerKind::Session)
            .with_permissions(Permissions {
                publish: false,
                subscribe: true,
                publish_data: false,
            })
            .receiving_for(id, subscriber_channels())
            .with_stream_ids(stream_ids);
        match state.media.join(req).await {
            Ok((j, s)) => Some((j.connection, s)),
            Err(e) => {
                state.media.leave(id, LeaveReason::ConnectionLost).await;
                return refuse_join(&mut ws, e.into()).await;
            }
        }
    } else {
        None
    };
    let (sub, sub_signals) = subscriber.unzip();
    let mut me = participant_of(&joined.participant);
    // What the token allows, not the core peer's publish-only stand-in.
    if let Some(p) = me.permission.as_mut() {
        p.can_subscribe = grant.permissions.subscribe;
    }
    tracing::info!(participant = %id, "livekit session joined");
    let roster = Roster {
        others: joined.others.iter().map(|p| (p.id, p.clone())).collect(),
    };
    let now = crate::services::token::now_secs();
    let join = lk::JoinResponse {
        room: Some(lk::Room {
            sid: names::room_sid(room.as_str()),
            name: room.to_string(),
            num_participants: u32::try_from(joined.others.len() + 1).unwrap_or(u32::MAX),
            creation_time: i64::try_from(now).unwrap_or(0),
            ..lk::Room::default()
        }),
        participant: Some(me),
        other_participants: joined.others.iter().map(participant_of).collect(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        subscriber_primary: false,
        // The same TURN servers and credentials as vela's `joined`.
        ice_servers: state
            .ice_servers_for(&joined.participant.id)
            .into_iter()
            .map(|s| lk::IceServer {
                urls: s.urls,
                username: s.username.unwrap_or_default(),
                credential: s.credential.unwrap_or_default(),
            })
            .collect(),
        ping_timeout: PING_TIMEOUT_SECS,
        ping_interval: PING_INTERVAL_SECS,
        server_info: Some(lk::ServerInfo {
            edition: lk::server_info::Edition::Standard as i32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node_id: state
                .cluster
                .as_ref()
                .map(|c| c.node().id.clone())
                .unwrap_or_default(),
            ..lk::ServerInfo::default()
        }),
        ..lk::JoinResponse::default()
    };
    let reason = if send(&mut ws, Resp::Join(join)).await {
        let me = Me {
            room: &room,
            id,
            sub,
            public: joined.participant.id,
            can_publish: grant.permissions.publish,
            tracks: Tracks::default(),
            wishes: HashMap::new(),
            offers: 0,
            data: DataAllowance::new(&state),
        };
        session(&state, &mut ws, me, signals, sub_signals, roster).await
    } else {
        Some(LeaveReason::ConnectionLost)
    };
    if let Some(reason) = reason {
        state.media.leave(id, reason).await;
    }
    // The subscriber connection goes with the participant (a no-op if the
    // core removed it already).
    if let Some(sub) = sub {
        state
            .media
            .leave(sub, reason.unwrap_or(LeaveReason::ClientLeave))
            .await;
    }
    tracing::info!(participant = %id, "livekit session closed");
}

/// A join the room refused: LiveKit's leave with `JOIN_FAILURE`, then the
/// socket closes.
async fn refuse_join(ws: &mut WebSocket, e: ApiError) {
    tracing::info!(status = %e.status, message = %e.message, "join refused");
    let leave = lk::LeaveRequest {
        reason: lk::DisconnectReason::JoinFailure as i32,
        action: lk::leave_request::Action::Disconnect as i32,
        ..lk::LeaveRequest::default()
    };
    send(ws, Resp::Leave(leave)).await;
    close(ws, 1008, "join refused").await;
}

/// The next signal of the subscriber connection; never, without one.
async fn next_of(signals: &mut Option<SignalReceiver>) -> Option<Signal> {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves a joined session until it ends; the reason to leave with, `None`
/// when the core already removed the participant.
async fn session(
    state: &AppState,
    ws: &mut WebSocket,
    mut me: Me<'_>,
    mut signals: SignalReceiver,
    mut sub_signals: Option<SignalReceiver>,
    mut roster: Roster,
) -> Option<LeaveReason> {
    let mut shutdown = state.shutdown.clone();
    let quiet = Duration::from_secs(PING_TIMEOUT_SECS.unsigned_abs().into());
    loop {
        tokio::select! {
            incoming = tokio::time::timeout(quiet, ws.recv()) => {
                let msg = match incoming {
                    Err(_) => {
                        tracing::info!("no message within the ping timeout");
                        close(ws, 1000, "ping timeout").await;
                        return Some(LeaveReason::ConnectionLost);
                    }
                    Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                        return Some(LeaveReason::ClientLeave);
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Text(_) => {
                        tracing::info!("text message: only binary protobuf is spoken");
                        close(ws, 1003, "only binary protobuf SignalRequests are supported").await;
                        return Some(LeaveReason::ClientLeave);
                    }
                    _ => continue,
                };
                let req = match lk::SignalRequest::decode(bytes.as_ref()) {
                    Ok(lk::SignalRequest { message: Some(m) }) => m,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::info!(error = %e, "malformed SignalRequest");
                        close(ws, 1007, "malformed SignalRequest").await;
                        return Some(LeaveReason::ClientLeave);
                    }
                };
                match handle(state, &mut me, req).await {
                    Handled::Reply(r) => {
                        if !send(ws, *r).await {
                            return Some(LeaveReason::ConnectionLost);
                        }
                    }
                    Handled::Nothing => {}
                    Handled::Leave => {
                        close(ws, 1000, "left").await;
                        return Some(LeaveReason::ClientLeave);
                    }
                }
            }
            signal = signals.recv() => {
                let Some(signal) = signal else {
                    close(ws, 1011, "media server stopped").await;
                    return None;
                };
                if let Signal::Left { reason } = signal {
                    send(ws, leave_message(reason)).await;
                    close(ws, 1000, "left").await;
                    return None;
                }
                if data(state, &mut me, &roster, &signal).await {
                    continue;
                }
                if let Some(r) = forward(&me, &mut roster, &signal)
                    && !send(ws, r).await
                {
                    return Some(LeaveReason::ConnectionLost);
                }
            }
            signal = next_of(&mut sub_signals) => {
                // Of the subscriber connection only its offers matter: the
                // room's news come with the participant's own signals.
                match signal {
                    Some(Signal::Offer(offer)) => {
                        me.offers += 1;
                        let offer = Resp::Offer(lk::SessionDescription {
                            r#type: "offer".to_owned(),
                            sdp: offer.to_sdp_string(),
                            id: me.offers,
                            ..lk::SessionDescription::default()
                        });
                        if !send(ws, offer).await {
                            return Some(LeaveReason::ConnectionLost);
                        }
                    }
                    // It failed (ICE, DTLS, too slow): the participant goes
                    // too, as a LiveKit participant whose subscriber
                    // connection fails does.
                    Some(Signal::Left { reason }) => {
                        tracing::info!(reason = reason.as_str(), "subscriber connection gone");
                        send(ws, leave_message(reason)).await;
                        close(ws, 1000, "subscriber connection gone").await;
                        return Some(reason);
                    }
                    None => {
                        close(ws, 1011, "media server stopped").await;
                        return Some(LeaveReason::ConnectionLost);
                    }
                    Some(_) => {}
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                send(ws, leave_message(LeaveReason::ServerShutdown)).await;
                close(ws, 1001, "server shutting down").await;
                return Some(LeaveReason::ServerShutdown);
            }
        }
    }
}

/// LiveKit's data packets: a user packet the client sent on its publisher
/// connection's `_reliable` or `_lossy` channel goes to the room as vela's
/// data (its topic and destination identities kept); the room's data
/// (another participant's, or the server API's) goes to the client on its
/// subscriber connection's `_reliable` channel. True when `signal` was
/// one of those. The user packet's own sender and destination fields are
/// deprecated in favour of the data packet's, but older SDKs still use
/// them: both are read and written.
#[allow(deprecated)]
async fn data(state: &AppState, me: &mut Me<'_>, roster: &Roster, signal: &Signal) -> bool {
    match signal {
        Signal::ChannelData { label, data, .. } => {
            let packet = match lk::DataPacket::decode(data.as_slice()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(%label, error = %e, "malformed DataPacket");
                    return true;
                }
            };
            let Some(lk::data_packet::Value::User(user)) = packet.value else {
                tracing::debug!(%label, "a data packet other than a user packet: ignored");
                return true;
            };
            // The room socket's limits: size, then messages and bytes per second.
            if user.payload.len() > MAX_DATA_BYTES || !me.data.take(user.payload.len()) {
                tracing::info!(
                    bytes = user.payload.len(),
                    "data packet over the size or rate limit: dropped"
                );
                return true;
            }
            let mut destinations = user.destination_identities;
            destinations.extend(packet.destination_identities);
            destinations.sort();
            destinations.dedup();
            let message = vela_media::core::DataMessage {
                topic: user.topic.filter(|t| !t.is_empty()).map(Into::into),
                payload: user.payload.into(),
                destinations,
            };
            if let Err(e) = state.media.send_data_from(me.id, message).await {
                let e = ApiError::from(e);
                tracing::info!(status = %e.status, message = %e.message, "data refused");
            }
            true
        }
        Signal::Data {
            from,
            topic,
            payload,
        } => {
            let Some(sub) = me.sub else {
                return true;
            };
            let (sid, identity) = match from {
                Some(p) => (
                    names::sid(&p.to_string(), PARTICIPANT),
                    roster
                        .others
                        .get(p)
                        .map(|i| i.identity.clone())
                        .unwrap_or_default(),
                ),
                None => (String::new(), String::new()),
            };
            let packet = lk::DataPacket {
                participant_identity: identity.clone(),
                value: Some(lk::data_packet::Value::User(lk::UserPacket {
                    participant_sid: sid,
                    participant_identity: identity,
                    payload: payload.to_vec(),
                    topic: topic.as_deref().map(str::to_owned),
                    ..lk::UserPacket::default()
                })),
                ..lk::DataPacket::default()
            };
            let sent = state
                .media
                .channel_send(sub, "_reliable".into(), packet.encode_to_vec())
                .await;
            if !matches!(sent, Ok(true)) {
                tracing::info!(
                    "data not delivered: the subscriber connection's channel is not open"
                );
            }
            true
        }
        _ => false,
    }
}

/// What a core signal becomes for a LiveKit client, if anything.
fn forward(me: &Me<'_>, roster: &mut Roster, signal: &Signal) -> Option<Resp> {
    if let Some(r) = roster.apply(signal) {
        return Some(r);
    }
    match signal {
        // Its own track, muted by the server API (the core tells a
        // publisher of its own mutes only then): LiveKit's server-initiated
        // mute, by the sid the client knows.
        Signal::TrackMuted {
            participant,
            track,
            muted,
            ..
        } if *participant == me.public => Some(Resp::Mute(lk::MuteTrackRequest {
            sid: me.tracks.sid_of(*track),
            muted: *muted,
        })),
        Signal::ActiveSpeakers(list) => Some(Resp::SpeakersChanged(lk::SpeakersChanged {
            speakers: list
                .iter()
                .map(|s| lk::SpeakerInfo {
                    sid: names::sid(&s.participant.to_string(), PARTICIPANT),
                    level: s.level,
                    active: true,
                })
                .collect(),
        })),
        // vela's three levels on LiveKit's scale (its `LOST` is a
        // participant vela has not measured, so never sent).
        Signal::ConnectionQuality(list) => {
            use vela_media::core::ConnectionQuality as Q;
            Some(Resp::ConnectionQuality(lk::ConnectionQualityUpdate {
                updates: list
                    .iter()
                    .map(|q| lk::ConnectionQualityInfo {
                        participant_sid: names::sid(&q.participant.to_string(), PARTICIPANT),
                        quality: match q.quality {
                            Q::Good => lk::ConnectionQuality::Excellent,
                            Q::Fair => lk::ConnectionQuality::Good,
                            Q::Poor => lk::ConnectionQuality::Poor,
                        } as i32,
                        score: q.score,
                    })
                    .collect(),
            }))
        }
        // Not carried yet: layer hints, permission changes. Server offers
        // come on the subscriber connection's signals, data in `data`.
        _ => None,
    }
}

/// The publisher connection's tracks: LiveKit's client announces each
/// (`add_track`) and waits for its sid before offering it, while the core
/// numbers a track when the offer arrives. So `add_track` is answered with
/// a sid of this session's (`TR_<participant>_<n>`), bound to the core's
/// track once the offer carrying it is accepted; others know the track by
/// the core's sid (`TR_<n>`), the publisher by the one it was given.
#[derive(Default)]
struct Tracks {
    /// Announced, not yet offered.
    pending: Vec<Announced>,
    /// The sids given, bound to the core's tracks.
    bound: HashMap<String, TrackId>,
    /// Sids handed out so far.
    count: u32,
}

/// A track the client announced (`add_track`) and has not offered yet.
struct Announced {
    /// The sid it was given.
    sid: String,
    kind: TrackKind,
    /// The client's id for it: its msid's track id in the offer.
    cid: String,
    /// What it carries, if the client said.
    source: Option<TrackSource>,
}

impl Tracks {
    /// What the offer's m-lines carry, by mid, for those the client
    /// announced with a source (matched by the msid's track id, the
    /// client's `cid`).
    fn sources(&self, offer: &SdpOffer) -> Vec<(String, TrackSource)> {
        offer
            .media_lines
            .iter()
            .filter(|m| m.typ.is_media() && m.direction().is_sending())
            .filter_map(|m| {
                let msid = m.msid()?;
                let a = self.pending.iter().find(|a| a.cid == msid.track_id)?;
                Some((m.mid().to_string(), a.source?))
            })
            .collect()
    }

    /// The core's track a sid names: one this session gave, or the core's own.
    fn track(&self, sid: &str) -> Option<TrackId> {
        if let Some(t) = self.bound.get(sid) {
            return Some(*t);
        }
        names::vela_id(sid, TRACK).parse().ok()
    }

    /// The sid the client knows a core track by.
    fn sid_of(&self, track: TrackId) -> String {
        self.bound
            .iter()
            .find(|(_, t)| **t == track)
            .map_or_else(|| names::sid(&track.to_string(), TRACK), |(s, _)| s.clone())
    }

    /// Binds the announced tracks to the core's new ones of the same kind,
    /// in order (the client adds its m-lines in the order it announced
    /// them, and the core numbers tracks in m-line order).
    fn bind(&mut self, mine: &[vela_media::core::TrackInfo]) {
        let mut fresh: Vec<_> = mine
            .iter()
            .filter(|t| !self.bound.values().any(|b| *b == t.id))
            .collect();
        fresh.sort_by_key(|t| t.id.0);
        for t in fresh {
            if let Some(i) = self.pending.iter().position(|a| a.kind == t.kind) {
                let sid = self.pending.remove(i).sid;
                tracing::debug!(%sid, track = %t.id, "announced track bound");
                self.bound.insert(sid, t.id);
            }
        }
    }
}

/// What a client request leads to.
enum Handled {
    /// Boxed: a response is large, and most requests have none.
    Reply(Box<Resp>),
    Nothing,
    Leave,
}

/// A request vela does not carry out (yet): logged, and answered with
/// LiveKit's `RequestResponse` so that the client is not left waiting
/// without a word.
fn refused(what: &str) -> Handled {
    tracing::warn!(request = what, "refused: not supported by vela yet");
    Handled::Reply(Box::new(Resp::RequestResponse(lk::RequestResponse {
        reason: lk::request_response::Reason::UnsupportedType as i32,
        message: format!("{what} is not supported by vela yet"),
        ..lk::RequestResponse::default()
    })))
}

/// A request the client may send that needs nothing from vela now.
fn accepted(what: &str) -> Handled {
    tracing::debug!(request = what, "accepted, nothing to do");
    Handled::Nothing
}

/// An error of a request that vela does carry out, as a refusal the client
/// can see.
fn failed(what: &str, e: ApiError) -> Handled {
    tracing::info!(request = what, status = %e.status, message = %e.message, "request failed");
    Handled::Reply(Box::new(Resp::RequestResponse(lk::RequestResponse {
        reason: lk::request_response::Reason::InvalidRequest as i32,
        message: format!("{what}: {}", e.message),
        ..lk::RequestResponse::default()
    })))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `candidate` of a trickled `RTCIceCandidateInit` (JSON).
fn candidate_of(init: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(init).ok()?;
    v["candidate"].as_str().map(str::to_owned)
}

/// The session as requests see it.
struct Me<'a> {
    room: &'a RoomId,
    /// The publisher connection (the participant).
    id: ConnectionId,
    /// The subscriber connection, if the token may subscribe.
    sub: Option<ConnectionId>,
    public: ParticipantId,
    can_publish: bool,
    tracks: Tracks,
    /// What the client asked of the tracks it receives, by track.
    wishes: HashMap<TrackId, Wish>,
    /// Offers made on the subscriber connection (their ids).
    offers: u32,
    /// The data it may still send (the room socket's limits).
    data: DataAllowance,
}

/// A client's wishes for one track it receives: LiveKit says subscribed or
/// not (`subscription`) apart from disabled or not and the size or quality
/// (`track_setting`); vela's track settings are both in one.
#[derive(Debug, Clone, Copy)]
struct Wish {
    subscribed: bool,
    disabled: bool,
    width: Option<u32>,
    height: Option<u32>,
}

impl Default for Wish {
    fn default() -> Self {
        Wish {
            subscribed: true,
            disabled: false,
            width: None,
            height: None,
        }
    }
}

impl Wish {
    fn settings(self) -> TrackSettings {
        TrackSettings {
            enabled: self.subscribed && !self.disabled,
            width: self.width,
            height: self.height,
        }
    }

    /// LiveKit's `track_setting`: a size when the client gives one, else a
    /// quality as a nominal size (low 320x180, medium 640x360; high: the
    /// top layer), `OFF` as disabled.
    fn set(&mut self, s: &lk::UpdateTrackSettings) {
        use lk::VideoQuality as Q;
        self.disabled = s.disabled;
        let size = |w: u32, h: u32| (Some(w), Some(h));
        (self.width, self.height) = if s.width > 0 && s.height > 0 {
            size(s.width, s.height)
        } else {
            match Q::try_from(s.quality) {
                Ok(Q::Low) => size(320, 180),
                Ok(Q::Medium) => size(640, 360),
                Ok(Q::Off) => {
                    self.disabled = true;
                    (None, None)
                }
                _ => (None, None),
            }
        };
    }
}

/// The tracks a `subscription` or `track_setting` names, by their sids
/// (`TR_<n>`); sids that name no track of vela's are left out.
fn tracks_named<'s>(sids: impl Iterator<Item = &'s String>) -> Vec<TrackId> {
    sids.filter_map(|s| names::vela_id(s, TRACK).parse().ok())
        .collect()
}

/// Applies the client's wishes for `tracks` (changed by `change`) to the
/// subscriber connection.
async fn wish(
    state: &AppState,
    me: &mut Me<'_>,
    what: &str,
    tracks: Vec<TrackId>,
    change: impl Fn(&mut Wish),
) -> Handled {
    let Some(sub) = me.sub else {
        return failed(what, ApiError::forbidden("subscribing needs canSubscribe"));
    };
    for t in tracks {
        let w = me.wishes.entry(t).or_default();
        change(w);
        let settings = w.settings();
        if let Err(e) = state.media.track_settings(sub, t, settings).await {
            return failed(what, e.into());
        }
    }
    Handled::Nothing
}

/// `add_track`: answered at once with the track's sid (see [`Tracks`]).
fn add_track(me: &mut Me<'_>, req: &lk::AddTrackRequest) -> Handled {
    if !me.can_publish {
        return failed(
            "add_track",
            ApiError::forbidden("publishing needs canPublish"),
        );
    }
    let kind = match lk::TrackType::try_from(req.r#type) {
        Ok(lk::TrackType::Audio) => TrackKind::Audio,
        Ok(lk::TrackType::Video) => TrackKind::Video,
        _ => return refused("add_track of a data track"),
    };
    me.tracks.count += 1;
    let sid = format!(
        "{}_{}",
        names::sid(&me.public.to_string(), PARTICIPANT).replacen(PARTICIPANT, TRACK, 1),
        me.tracks.count
    );
    // LiveKit's sources as vela's (an unknown one: by the track's kind).
    let source = match lk::TrackSource::try_from(req.source) {
        Ok(lk::TrackSource::Camera) => Some(TrackSource::Camera),
        Ok(lk::TrackSource::Microphone) => Some(TrackSource::Microphone),
        Ok(lk::TrackSource::ScreenShare) => Some(TrackSource::Screen),
        Ok(lk::TrackSource::ScreenShareAudio) => Some(TrackSource::ScreenAudio),
        _ => None,
    };
    me.tracks.pending.push(Announced {
        sid: sid.clone(),
        kind,
        cid: req.cid.clone(),
        source,
    });
    Handled::Reply(Box::new(Resp::TrackPublished(lk::TrackPublishedResponse {
        cid: req.cid.clone(),
        track: Some(lk::TrackInfo {
            sid,
            r#type: req.r#type,
            name: req.name.clone(),
            muted: req.muted,
            width: req.width,
            height: req.height,
            source: req.source,
            stream: req.stream.clone(),
            ..lk::TrackInfo::default()
        }),
    })))
}

/// Binds announced tracks to the core's (see [`Tracks`]). The room lists a
/// participant once its connection is up, so a track offered before that
/// is bound at the next offer or the first request that names it.
async fn rebind(state: &AppState, me: &mut Me<'_>) {
    if me.tracks.pending.is_empty() {
        return;
    }
    if let Ok(all) = state.media.participants(me.room.clone()).await
        && let Some(mine) = all.iter().find(|p| p.id == me.public)
    {
        me.tracks.bind(&mine.tracks);
    }
}

async fn handle(state: &AppState, me: &mut Me<'_>, req: Req) -> Handled {
    let id = me.id;
    match req {
        Req::Offer(sd) => {
            let offer = match SdpOffer::from_sdp_string(&sd.sdp) {
                Ok(o) => o,
                Err(e) => {
                    let reason = crate::transports::whip::sdp_reason(&e);
                    return failed("offer", ApiError::bad_request(reason));
                }
            };
            let sources = me.tracks.sources(&offer);
            match state.media.offer_with_sources(id, offer, sources).await {
                Ok(answer) => {
                    rebind(state, me).await;
                    Handled::Reply(Box::new(Resp::Answer(lk::SessionDescription {
                        r#type: "answer".to_owned(),
                        sdp: answer.to_sdp_string(),
                        id: sd.id,
                        ..lk::SessionDescription::default()
                    })))
                }
                Err(e) => failed("offer", e.into()),
            }
        }
        Req::Trickle(t) => {
            let target = if t.target == lk::SignalTarget::Subscriber as i32 {
                match me.sub {
                    Some(sub) => sub,
                    None => return failed("trickle", ApiError::bad_request("no subscriber")),
                }
            } else {
                id
            };
            let Some(candidate) = candidate_of(&t.candidate_init) else {
                return failed("trickle", ApiError::bad_request("malformed candidateInit"));
            };
            match state.media.candidate(target, candidate).await {
                Ok(()) => Handled::Nothing,
                Err(e) => failed("trickle", e.into()),
            }
        }
        Req::Mute(m) => {
            if !me.tracks.bound.contains_key(&m.sid) {
                rebind(state, me).await;
            }
            let Some(track) = me.tracks.track(&m.sid) else {
                return failed("mute", ApiError::bad_request("malformed track sid"));
            };
            match state.media.mute(id, Some(track), None, m.muted).await {
                Ok(_) => Handled::Nothing,
                Err(e) => failed("mute", e.into()),
            }
        }
        Req::Leave(_) => Handled::Leave,
        Req::Ping(ts) => Handled::Reply(Box::new(Resp::Pong(ts))),
        Req::PingReq(p) => Handled::Reply(Box::new(Resp::PongResp(lk::Pong {
            last_ping_timestamp: p.timestamp,
            timestamp: now_ms(),
        }))),
        Req::TrackSetting(t) => {
            let tracks = tracks_named(t.track_sids.iter());
            wish(state, me, "track_setting", tracks, |w| w.set(&t)).await
        }
        Req::Subscription(u) => {
            let sids = u.track_sids.iter().chain(
                u.participant_tracks
                    .iter()
                    .flat_map(|p| p.track_sids.iter()),
            );
            let tracks = tracks_named(sids);
            let on = u.subscribe;
            wish(state, me, "subscription", tracks, |w| w.subscribed = on).await
        }
        Req::Answer(sd) => {
            let Some(sub) = me.sub else {
                return failed("answer", ApiError::bad_request("no subscriber connection"));
            };
            let answer = match SdpAnswer::from_sdp_string(&sd.sdp) {
                Ok(a) => a,
                Err(e) => {
                    let reason = crate::transports::whip::sdp_reason(&e);
                    return failed("answer", ApiError::bad_request(reason));
                }
            };
            match state.media.answer(sub, answer).await {
                Ok(()) => Handled::Nothing,
                Err(e) => failed("answer", e.into()),
            }
        }
        // Deprecated by LiveKit, still sent by older clients.
        #[allow(deprecated)]
        Req::UpdateLayers(_) => accepted("update_layers"),
        Req::SubscriptionPermission(_) => accepted("subscription_permission"),
        Req::SyncState(_) => accepted("sync_state"),
        Req::AddTrack(t) => add_track(me, &t),
        Req::Simulate(_) => refused("simulate"),
        Req::UpdateMetadata(_) => refused("update_metadata"),
        Req::UpdateAudioTrack(_) => refused("update_audio_track"),
        Req::UpdateVideoTrack(_) => refused("update_video_track"),
        Req::PublishDataTrackRequest(_) => refused("publish_data_track"),
        Req::UnpublishDataTrackRequest(_) => refused("unpublish_data_track"),
        Req::UpdateDataSubscription(_) => refused("update_data_subscription"),
        Req::StoreDataBlobRequest(_) => refused("store_data_blob"),
        Req::GetDataBlobRequest(_) => refused("get_data_blob"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickled_candidate_init_gives_its_candidate() {
        let init = concat!(
            r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","#,
            r#""sdpMid":"0","sdpMLineIndex":0}"#
        );
        assert_eq!(
            candidate_of(init).as_deref(),
            Some("candidate:1 1 udp 1 127.0.0.1 5000 typ host")
        );
        assert_eq!(candidate_of("nope"), None);
        assert_eq!(candidate_of("{}"), None);
    }

    #[test]
    fn every_leave_reason_is_a_disconnect() {
        for r in [LeaveReason::ClientLeave, LeaveReason::RoomDeleted] {
            let Resp::Leave(l) = leave_message(r) else {
                panic!("not a leave");
            };
            assert_eq!(l.action, lk::leave_request::Action::Disconnect as i32);
            assert_ne!(l.reason, lk::DisconnectReason::UnknownReason as i32);
        }
    }
}
