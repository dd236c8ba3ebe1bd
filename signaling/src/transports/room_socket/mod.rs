//! A signaling session: one WebSocket per participant (docs/protocol.md).

mod join;
mod messages;
pub(crate) mod protocol;
mod proxy;

use join::{Join, Joining, join};
pub(crate) use messages::{MAX_DATA_BYTES, decode_payload};
use messages::{forward_signal, handle_message};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::response::Response;
use tokio::sync::mpsc;
use tracing::Instrument;
use vela_media::SignalReceiver;
use vela_media::core::{
    ConnectionId, Joined, LeaveReason, ParticipantId, ParticipantInfo, PeerKind, RoomId, SdpAnswer,
    SdpOffer, Signal, TrackSettings,
};

use crate::domain::ids::{AccountId, DeviceId};
use crate::services::hub::{CLOSE_REVOKED, HubMsg};
use crate::services::lease::DeviceLease;
use crate::services::rate_limit::TokenBucket;
use crate::services::token::Credential;
use crate::transports::error::ApiError;
use crate::transports::resume::{ResumeEntry, new_resume_token};
use crate::transports::room_socket::protocol::{
    ClientMessage, QualityEntry, ServerMessage, SpeakerEntry, parse_kind,
};
use crate::transports::state::AppState;
use crate::transports::ws::{auth_timeout, close, limited, next_text, send_text};

/// Where a room socket comes from.
#[derive(Debug, Clone, Copy)]
struct Origin {
    /// The client's address: the peer's, a trusted reverse proxy's
    /// `X-Forwarded-For`, or the one a cluster node that proxies the socket
    /// signed.
    addr: IpAddr,
    /// Proxied here by another node of the cluster: never proxied again.
    proxied: bool,
}

/// `GET /ws`: upgrades to a signaling session.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    let forwarded = crate::transports::cluster::forwarded_client(&state, &parts.headers);
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let origin = Origin {
        addr: forwarded.unwrap_or_else(|| {
            crate::transports::http::client_addr::client_addr(
                peer,
                &parts.headers,
                &state.trusted_proxies,
            )
        }),
        proxied: forwarded.is_some(),
    };
    let tracker = state.socket_tasks.clone();
    limited(ws, &state).on_upgrade(move |socket| tracker.track_future(run(state, socket, origin)))
}

async fn send(ws: &mut WebSocket, msg: &ServerMessage<'_>) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => send_text(ws, text).await,
        Err(_) => false,
    }
}

async fn send_error(ws: &mut WebSocket, code: u16, message: &str) -> bool {
    send(ws, &ServerMessage::Error { code, message }).await
}

async fn run(state: AppState, mut ws: WebSocket, origin: Origin) {
    // The first message must be `join` (or `resume`).
    let first = match tokio::time::timeout(auth_timeout(&state), next_text(&mut ws)).await {
        Err(_) => return close(&mut ws, 1008, "join expected").await,
        Ok(Err((code, reason))) => return close(&mut ws, code, reason).await,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(t))) => t,
    };
    if let Ok(ClientMessage::Resume {
        participant_id,
        resume_token,
    }) = serde_json::from_str::<ClientMessage>(&first)
    {
        return resume(&state, ws, &participant_id, &resume_token, origin, first).await;
    }
    let join = match join(&state, &first, origin.proxied).await {
        Ok(Joining::Here(j)) => j,
        Ok(Joining::Elsewhere {
            room,
            node,
            public_url,
        }) if !origin.proxied => {
            let span = tracing::info_span!("proxy", %room, %node, client = %origin.addr);
            return proxy::proxy(&state, ws, first, (&node, &public_url), origin.addr)
                .instrument(span)
                .await;
        }
        Ok(Joining::Elsewhere { node, .. }) => {
            // The claim moved while the socket was on its way: the client
            // joins again and is sent to the new home.
            let message = format!("the room moved to node {node}; join again");
            send_error(&mut ws, 503, &message).await;
            return close(&mut ws, 1013, "room moved").await;
        }
        Err(e) => {
            let message = match e.retry_after {
                Some(secs) => format!("{} (retry in {secs} s)", e.message),
                None => e.message,
            };
            send_error(&mut ws, e.status.as_u16(), &message).await;
            return close(&mut ws, 1008, "join refused").await;
        }
    };
    let id = join.joined.connection;
    let span =
        tracing::info_span!("session", room = %join.room, participant = %id, client = %origin.addr);
    serve(state, ws, *join).instrument(span).await;
}

/// A new socket asks to continue a session: hands it to the session's task,
/// or, in a cluster, to the node the session lives on (its resume token
/// names it).
async fn resume(
    state: &AppState,
    ws: WebSocket,
    participant: &str,
    token: &str,
    origin: Origin,
    first: String,
) {
    let tx = participant
        .parse::<ParticipantId>()
        .ok()
        .and_then(|p| state.resumable.sender(p, token));
    if tx.is_none()
        && !origin.proxied
        && let Some(registry) = &state.nodes
        && let Some(node) = resume_token_node(token)
        && node != registry.cluster().node().id
        && let Ok(Some(home)) = registry.node(&node).await
    {
        let span = tracing::info_span!("proxy", node = %home.id, client = %origin.addr);
        return proxy::proxy(state, ws, first, (&home.id, &home.public_url), origin.addr)
            .instrument(span)
            .await;
    }
    let refused = match tx {
        None => Some(ws),
        Some(tx) => tx.send(ws).await.err().map(|e| e.0),
    };
    if let Some(mut ws) = refused {
        send_error(&mut ws, 404, "no session to resume").await;
        close(&mut ws, 1008, "resume refused").await;
    }
}

/// A session's resume token: random, and in a cluster followed by `.` and
/// the node's id (base64url), so that a resume reaching another node is
/// proxied to the session's node.
fn session_resume_token(state: &AppState) -> Option<String> {
    use base64::Engine as _;
    let token = new_resume_token()?;
    Some(match &state.cluster {
        None => token,
        Some(c) => format!(
            "{token}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.node().id.as_bytes())
        ),
    })
}

/// The node a resume token names, if any.
fn resume_token_node(token: &str) -> Option<String> {
    use base64::Engine as _;
    let (_, node) = token.rsplit_once('.')?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(node)
        .ok()?;
    String::from_utf8(bytes).ok().filter(|n| !n.is_empty())
}

/// The signals of a session and what a resumed socket must be told again.
struct Link {
    signals: SignalReceiver,
    /// Signals that arrived while no socket was attached.
    buffered: VecDeque<Signal>,
    /// The last server offer, until the client's answer arrives.
    pending_offer: Option<String>,
    /// What the participant may still send as data messages.
    data: DataAllowance,
    /// Messages of any kind the socket may still send (amplification: a
    /// mute or an offer is work for the whole room).
    messages: TokenBucket,
}

/// A participant's data messages per second and bytes per second
/// (`limits.data_messages_per_second`, `limits.data_bytes_per_second`),
/// each with a second's worth as burst.
pub(crate) struct DataAllowance {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl DataAllowance {
    pub(crate) fn new(state: &AppState) -> Self {
        let now = std::time::Instant::now();
        DataAllowance {
            messages: TokenBucket::new(state.config.limits.data_messages_per_second, now),
            bytes: TokenBucket::new(state.config.limits.data_bytes_per_second, now),
        }
    }

    /// Takes one message of `len` bytes, or refuses it (taking nothing).
    pub(crate) fn take(&mut self, len: usize) -> bool {
        let now = std::time::Instant::now();
        let mut probe = self.messages.clone();
        if !probe.take(1.0, now) || !self.bytes.take(len as f64, now) {
            return false;
        }
        self.messages = probe;
        true
    }
}

/// How a socket's part of a session ended.
enum Outcome {
    /// The session is over; leave with this reason (`None`: already removed).
    Ended(Option<LeaveReason>),
    /// The socket dropped; the session waits for a `resume`.
    Dropped,
    /// A new socket resumed the session while this one was still open.
    Replaced(Box<WebSocket>),
}

async fn serve(state: AppState, ws: WebSocket, join: Join) {
    let Join {
        room,
        joined,
        signals,
        account,
        admin,
    } = join;
    let mut ws = ws;
    let id = joined.connection;
    let public = joined.participant.id;
    tracing::info!(identity = %joined.participant.identity, "session joined");
    // A session of a signed-in device: revoking the device or disabling the
    // account ends it, and the account shows as in a call meanwhile.
    let mut lease = account.map(|(a, d)| DeviceLease::take(&state.hub, &state.presence, a, d));
    let revoked = match account {
        Some((a, d)) => !matches!(
            state.store.sign_in_state(a, d).await,
            Ok(crate::services::store::SignInState::Active)
        ),
        None => false,
    };
    let token = session_resume_token(&state);
    if revoked || token.is_none() {
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
        return;
    }
    let token = token.unwrap_or_default();
    // A call room's session: the call learns the participant id, and its end.
    let _call = state
        .calls
        .track_session(room.as_str(), account, id, public);
    let (resume_tx, mut resume_rx) = mpsc::channel(1);
    state.resumable.insert(
        public,
        ResumeEntry {
            connection: id,
            token: token.clone(),
            tx: resume_tx,
        },
    );
    let mut link = Link {
        signals,
        buffered: VecDeque::new(),
        pending_offer: None,
        data: DataAllowance::new(&state),
        messages: TokenBucket::new(
            state.config.limits.messages_per_second,
            std::time::Instant::now(),
        ),
    };
    let mut first = Some(joined);
    let reason = loop {
        let ok = greet(
            &state,
            &mut ws,
            (&room, public, admin),
            &token,
            first.take(),
            &mut link,
        )
        .await;
        let outcome = if ok {
            session_loop(
                &state,
                &mut ws,
                id,
                &mut link,
                &mut resume_rx,
                lease.as_mut(),
            )
            .await
        } else {
            Outcome::Dropped
        };
        match outcome {
            Outcome::Ended(reason) => break reason,
            Outcome::Replaced(new) => {
                tracing::info!("session resumed on a new socket");
                close(&mut ws, 1000, "resumed elsewhere").await;
                ws = *new;
            }
            Outcome::Dropped => {
                tracing::info!("socket dropped; keeping the session for a resume");
                // Finish the close handshake (if the peer is still there) so
                // the client learns at once and resumes.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    use futures_util::SinkExt as _;
                    let _ = ws.flush().await;
                    let _ = ws.close().await;
                })
                .await;
                // Closed for good: the client sees the end of the socket now.
                drop(ws);
                match detached(&state, id, &mut link, &mut resume_rx, &mut lease).await {
                    Ok(new) => {
                        tracing::info!("session resumed");
                        ws = new;
                    }
                    Err(reason) => break reason,
                }
            }
        }
    };
    state.resumable.remove(public, id);
    // Whatever ended the session, the participant leaves the room.
    if let Some(reason) = reason {
        state.media.leave(id, reason).await;
    }
    // Unregistered, and out of the call in presence.
    drop(lease);
    tracing::info!("session closed");
}

/// Sends `joined` to a new socket: the join's answer, or on a resume the
/// room as it is now, the unanswered offer and what arrived meanwhile.
async fn greet(
    state: &AppState,
    ws: &mut WebSocket,
    (room, public, can_admin): (&RoomId, ParticipantId, bool),
    token: &str,
    first: Option<Joined>,
    link: &mut Link,
) -> bool {
    // Fresh credentials on every `joined`: a resumed session gets new ones
    // for its next ICE restart.
    let ice_servers = state.ice_servers_for(&public);
    if let Some(joined) = first {
        return send(
            ws,
            &ServerMessage::Joined {
                room: room.as_str(),
                participant: &joined.participant,
                participants: &joined.others,
                resume_token: token,
                can_admin,
                ice_servers: &ice_servers,
            },
        )
        .await;
    }
    let all = state
        .media
        .participants(room.clone())
        .await
        .unwrap_or_default();
    let Some(me) = all.iter().find(|p| p.id == public).cloned() else {
        // Gone from the room: the `left` signal follows.
        return true;
    };
    let others: Vec<ParticipantInfo> = all.into_iter().filter(|p| p.id != public).collect();
    let ok = send(
        ws,
        &ServerMessage::Joined {
            room: room.as_str(),
            participant: &me,
            participants: &others,
            resume_token: token,
            can_admin,
            ice_servers: &ice_servers,
        },
    )
    .await;
    if !ok {
        return false;
    }
    if let Some(sdp) = link.pending_offer.clone()
        && !send(ws, &ServerMessage::Offer { sdp }).await
    {
        return false;
    }
    while let Some(signal) = link.buffered.pop_front() {
        if !forward_signal(ws, signal, &mut link.pending_offer).await {
            return false;
        }
    }
    true
}

/// Waits, without a socket, for a `resume` (`Ok`) or the end of the session
/// (`Err` with the reason to leave with, `None` when already removed).
async fn detached(
    state: &AppState,
    id: ConnectionId,
    link: &mut Link,
    resume_rx: &mut mpsc::Receiver<WebSocket>,
    lease: &mut Option<DeviceLease>,
) -> Result<WebSocket, Option<LeaveReason>> {
    let mut shutdown = state.shutdown.clone();
    let deadline = tokio::time::sleep(Duration::from_millis(
        state.config.media.reconnect_timeout_ms,
    ));
    tokio::pin!(deadline);
    loop {
        let killed = DeviceLease::next_order(lease.as_mut());
        tokio::select! {
            new = resume_rx.recv() => {
                if let Some(ws) = new {
                    return Ok(ws);
                }
            }
            () = &mut deadline => {
                tracing::info!("no resume within the reconnect timeout");
                return Err(Some(LeaveReason::ConnectionLost));
            }
            msg = killed => {
                if let Some(HubMsg::Event(_)) = msg {
                    continue;
                }
                state.media.leave(id, LeaveReason::Removed).await;
                return Err(None);
            }
            signal = link.signals.recv() => match signal {
                None | Some(Signal::Left { .. }) => return Err(None),
                Some(s) => {
                    // Bounded like the queue in front of it: a session that
                    // would miss more than that cannot be resumed whole.
                    if link.buffered.len() >= state.config.limits.max_queued_messages as usize {
                        tracing::info!("too much arrived while detached: the session ends");
                        return Err(Some(LeaveReason::TooSlow));
                    }
                    link.buffered.push_back(s);
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Err(None),
        }
    }
}

/// Runs until the socket's part of the session ends.
async fn session_loop(
    state: &AppState,
    ws: &mut WebSocket,
    id: ConnectionId,
    link: &mut Link,
    resume_rx: &mut mpsc::Receiver<WebSocket>,
    mut lease: Option<&mut DeviceLease>,
) -> Outcome {
    let mut shutdown = state.shutdown.clone();
    loop {
        let killed = DeviceLease::next_order(lease.as_deref_mut());
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
                return Outcome::Ended(None);
            }
            new = resume_rx.recv() => {
                if let Some(new) = new {
                    return Outcome::Replaced(Box::new(new));
                }
            }
            incoming = next_text(ws) => match incoming {
                Ok(Some(text)) => {
                    if !link.messages.take(1.0, std::time::Instant::now()) {
                        if !send_error(ws, 429, "too many messages (limits.messages_per_second): dropped").await {
                            return Outcome::Dropped;
                        }
                        continue;
                    }
                    if handle_message(state, ws, id, &text, &mut link.pending_offer, &mut link.data)
                        .await
                        .is_some()
                    {
                        return Outcome::Dropped;
                    }
                }
                Ok(None) => return Outcome::Dropped,
                // A message the protocol refuses ends the session; a broken
                // connection may come back.
                Err((code, reason)) if code == 1009 || code == 1003 => {
                    close(ws, code, reason).await;
                    return Outcome::Ended(Some(LeaveReason::ClientLeave));
                }
                Err(_) => return Outcome::Dropped,
            },
            signal = link.signals.recv() => {
                let Some(signal) = signal else {
                    close(ws, 1011, "media server stopped").await;
                    return Outcome::Ended(None);
                };
                if let Signal::Left { reason } = signal {
                    send(ws, &ServerMessage::Left { reason }).await;
                    if reason == LeaveReason::TooSlow {
                        close(ws, 1013, "too slow to keep up").await;
                    } else {
                        close(ws, 1000, "left").await;
                    }
                    return Outcome::Ended(None);
                }
                if !forward_signal(ws, signal, &mut link.pending_offer).await {
                    return Outcome::Dropped;
                }
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                // The media driver sends `left` to everyone as it shuts down.
                let wait = tokio::time::timeout(Duration::from_secs(2), link.signals.recv()).await;
                if let Ok(Some(Signal::Left { reason })) = wait {
                    send(ws, &ServerMessage::Left { reason }).await;
                }
                close(ws, 1001, "server shutting down").await;
                return Outcome::Ended(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_token_names_its_node_or_none() {
        use base64::Engine as _;
        let node = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("127.0.0.1:7880");
        let token = format!("{}.{node}", new_resume_token().unwrap());
        assert_eq!(resume_token_node(&token).as_deref(), Some("127.0.0.1:7880"));
        // A single node's token (base64url: no dot), or garbage, names none.
        assert_eq!(resume_token_node(&new_resume_token().unwrap()), None);
        assert_eq!(resume_token_node("x."), None);
        assert_eq!(resume_token_node("x.%%%"), None);
    }
}
