//! The room socket (`GET /ws`): the `ClientMessage` decoder, and sessions
//! sending any sequence of messages, applied to a real core as
//! `signaling/src/transports/room_socket/` applies them through the media handle (the driver maps each
//! command to one `Sfu::handle_*` call): `join` (room token checked with the
//! server's `TokenKeys`), `offer` (its `sources` checked as the transport
//! does, then noted with `Sfu::set_track_sources`), `answer`, `candidate`, `mute`,
//! `track_settings`, `data`, `leave`, `ping`, `resume`, in any order.
//! The server's random resume tokens are `resume-PA<n>` here (the
//! session's participant id), so inputs can `resume` a session and
//! `take_over` a participant (which outside call rooms needs its token).
//! The socket and the channel to the driver are not in the loop.
//!
//! Input: text, one message a line. A line `@N <message>` is session N's
//! (0 to 3; without `@`, session 0). Besides messages, lines that make a
//! session's stand-in browser (a str0m client on an in-memory network, ICE
//! and DTLS for real) act: `!offer SPEC` sends its offer (SPEC letters: `a`
//! audio, `v` video, `s` simulcast video, `r` receive audio and video, `d`
//! a data channel; its `sources` name the video a screen with `S`, the
//! audio the screen's with `A`, the video a microphone with `X`) and
//! applies the answer, `!answer` answers the server's
//! pending offer, `!media` sends a frame on each of its sending m-lines
//! (`!key`: video keyframes). `+MS` lets MS milliseconds pass (timeouts
//! run, datagrams move); each line also lets 10 ms pass.
//!
//! Properties: a session that has not been told `left` is still in the core
//! after its signals were delivered; at shutdown every participant is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};
use vela_media_core::{
    ConnectionId, DataMessage, JoinRequest, LeaveReason, ParticipantId, PeerKind, Permissions,
    RoomId, SdpAnswer, SdpOffer, Sfu, Signal, TrackSettings,
};
use vela_signaling::fuzz::{
    ClientMessage, decode_client_message, decode_payload, parse_kind, parse_sources,
};
use vela_signaling::token::{Credential, TokenKeys};

use crate::net::{self, Client, Net};
use crate::world;

/// The API key and secret the seeds' tokens are signed with.
pub const API_KEY: &str = "vela-fuzz";
/// See [`API_KEY`].
pub const API_SECRET: &str = "vela-fuzz-secret-that-is-long-enough-for-hs256";

const SESSIONS: usize = 4;
const MAX_LINES: usize = 64;
/// The longest pause one `+MS` line asks for.
const MAX_WAIT_MS: u64 = 120_000;

/// One socket's part.
enum Session {
    /// Connected; the first message must be `join` (or `resume`).
    New,
    /// Joined as this connection.
    Joined {
        id: ConnectionId,
        /// The participant id the others (and `resume`) know it by.
        public: ParticipantId,
        /// The server's offer not answered yet.
        pending_offer: Option<String>,
        /// The browser standing in for the client, once it offered or answered.
        client: Option<Box<Client>>,
    },
    /// The socket is closed.
    Closed,
}

struct World {
    sfu: Sfu,
    now: Instant,
    net: Net,
    keys: TokenKeys,
    sessions: [Session; SESSIONS],
    /// Sessions a `resume` may continue: participant, resume token.
    resumable: Vec<(ParticipantId, String)>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    let mut w = World {
        sfu: world::sfu(now),
        now,
        net: Net::default(),
        keys: TokenKeys::new(API_KEY, API_SECRET),
        sessions: [Session::New, Session::New, Session::New, Session::New],
        resumable: Vec::new(),
    };
    for line in text.lines().take(MAX_LINES) {
        let (who, line) = match line.strip_prefix('@').and_then(|r| r.split_once(' ')) {
            Some((n, rest)) => match n.parse::<usize>() {
                Ok(n) if n < SESSIONS => (n, rest),
                _ => continue,
            },
            None => (0, line),
        };
        if let Some(ms) = line.strip_prefix('+') {
            let ms = ms.trim().parse::<u64>().unwrap_or(0).min(MAX_WAIT_MS);
            w.pass(Duration::from_millis(ms));
            continue;
        }
        match line.trim().split_once(' ').unwrap_or((line.trim(), "")) {
            ("!answer", _) => {
                if let Some(message) = w.browser_answer(who) {
                    w.receive(who, &message);
                }
            }
            ("!offer", spec) => w.browser_offer(who, spec),
            ("!media", _) => w.browser_media(who, false),
            ("!key", _) => w.browser_media(who, true),
            _ => w.receive(who, line),
        }
        w.pass(Duration::from_millis(10));
    }
    world::shut_down(&mut w.sfu, w.now);
}

impl World {
    /// Time passes: the core's and the browsers' timeouts run, datagrams
    /// move, signals are delivered.
    fn pass(&mut self, d: Duration) {
        let end = self.now + d;
        // Bounded: past that many steps the rest of the time passes at once.
        for _ in 0..1000 {
            self.deliver();
            let next = self.net.core_timeout.unwrap_or(end);
            let next = self
                .sessions
                .iter()
                .filter_map(|s| match s {
                    Session::Joined {
                        client: Some(c), ..
                    } => Some(c.timeout),
                    _ => None,
                })
                .fold(next, Instant::min);
            self.now = next.clamp((self.now + Duration::from_millis(1)).min(end), end);
            self.sfu.handle_timeout(self.now);
            net::client_timeouts(self.now, &mut self.clients());
            if self.now >= end {
                break;
            }
        }
        if self.now < end {
            self.now = end;
            self.sfu.handle_timeout(self.now);
        }
        self.deliver();
    }

    /// The stand-in browsers.
    fn clients(&mut self) -> Vec<&mut Client> {
        self.sessions
            .iter_mut()
            .filter_map(|s| match s {
                Session::Joined {
                    client: Some(c), ..
                } => Some(&mut **c),
                _ => None,
            })
            .collect()
    }

    /// Hands the core's signals to the sessions, as `forward_signal`.
    fn deliver(&mut self) {
        let mut clients: Vec<&mut Client> = self
            .sessions
            .iter_mut()
            .filter_map(|s| match s {
                Session::Joined {
                    client: Some(c), ..
                } => Some(&mut **c),
                _ => None,
            })
            .collect();
        let signals = self.net.pump(&mut self.sfu, self.now, &mut clients);
        for (to, signal) in signals {
            let Some(session) = self
                .sessions
                .iter_mut()
                .find(|s| matches!(s, Session::Joined { id, .. } if *id == to))
            else {
                continue;
            };
            crate::debug!("  signal to {to}: {}", signal_name(&signal));
            match signal {
                Signal::Left { .. } => *session = Session::Closed,
                Signal::Offer(o) => {
                    if let Session::Joined { pending_offer, .. } = session {
                        *pending_offer = Some(o.to_sdp_string());
                    }
                }
                _ => {}
            }
        }
        for s in &self.sessions {
            if let Session::Joined { id, .. } = s {
                assert!(
                    self.sfu.room_of(*id).is_some(),
                    "{id} left the core without being told"
                );
            }
        }
    }

    /// One text message from session `who`'s socket.
    fn receive(&mut self, who: usize, text: &str) {
        match self.sessions[who] {
            Session::Closed => {}
            Session::New => {
                if let Ok(ClientMessage::Resume {
                    participant_id,
                    resume_token,
                }) = decode_client_message(text)
                {
                    self.resume(who, &participant_id, &resume_token);
                    return;
                }
                let next = self.join(text).ok();
                crate::debug!("session {who}: join -> {next:?}");
                self.sessions[who] = match next {
                    Some((id, public)) => Session::Joined {
                        id,
                        public,
                        pending_offer: None,
                        client: None,
                    },
                    None => Session::Closed,
                };
            }
            Session::Joined { id, .. } => self.handle_message(who, id, text),
        }
    }

    /// `session::resume`: a new socket continues the session whose
    /// participant and resume token it names; the old socket is closed.
    fn resume(&mut self, who: usize, participant: &str, token: &str) {
        let found = participant
            .parse::<ParticipantId>()
            .ok()
            .filter(|p| self.resumable.iter().any(|(q, t)| q == p && t == token))
            .and_then(|p| {
                self.sessions
                    .iter()
                    .position(|s| matches!(s, Session::Joined { public, .. } if *public == p))
            });
        crate::debug!("session {who}: resume -> {found:?}");
        self.sessions[who] = match found {
            Some(old) => std::mem::replace(&mut self.sessions[old], Session::Closed),
            None => Session::Closed,
        };
    }

    /// `session::join` for a room token; an account's access token would
    /// need the store, and is refused here.
    fn join(&mut self, text: &str) -> Result<(ConnectionId, ParticipantId), ()> {
        let Ok(ClientMessage::Join {
            token,
            room,
            name,
            take_over,
            resume_token,
        }) = decode_client_message(text)
        else {
            return Err(());
        };
        let Ok(Credential::Room(claims)) = self.keys.verify_credential(&token) else {
            return Err(());
        };
        let room = room.or_else(|| claims.video.room.clone()).ok_or(())?;
        let room = RoomId::new(&room).map_err(|_| ())?;
        // `AppState::check_room_claims`.
        if !claims.video.room_join || claims.video.room.as_deref() != Some(room.as_str()) {
            return Err(());
        }
        // `call::service::room_access`: call rooms admit accounts only.
        let take_over = match take_over.filter(|t| !t.is_empty()) {
            Some(t) => Some(t.parse::<ConnectionId>().map_err(|_| ())?),
            None => None,
        };
        if vela_signaling::fuzz::is_call_room(room.as_str()) {
            return Err(());
        }
        // `session::check_take_over`: the taken-over session's resume token
        // (a room token has no account and device to match instead); the
        // client names the participant by its connection's number.
        if let Some(from) = take_over {
            let proof = resume_token.is_some_and(|t| {
                self.resumable
                    .iter()
                    .any(|(p, rt)| p.0 == from.0 && *rt == t)
            });
            if !proof {
                return Err(());
            }
        }
        let name = name
            .filter(|n| !n.trim().is_empty())
            .map(|n| n.chars().take(64).collect::<String>())
            .unwrap_or_else(|| claims.display_name().to_owned());
        let req = JoinRequest::new(room, claims.sub.clone(), PeerKind::Session)
            .with_name(name)
            .with_permissions(Permissions {
                publish: claims.can_publish(),
                subscribe: claims.can_subscribe(),
                publish_data: claims.can_publish_data(),
            });
        let joined = match take_over {
            Some(from) => self.sfu.handle_handover(self.now, from, req),
            None => self.sfu.handle_join(self.now, req),
        };
        match joined {
            Ok(j) => {
                let public = j.participant.id;
                if !self.resumable.iter().any(|(p, _)| *p == public) {
                    self.resumable.push((public, format!("resume-{public}")));
                }
                Ok((j.connection, public))
            }
            Err(e) => {
                crate::debug!("  join refused: {e}");
                Err(())
            }
        }
    }

    /// `session::handle_message` with the driver's mapping to the core.
    fn handle_message(&mut self, who: usize, id: ConnectionId, text: &str) {
        let msg = match decode_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                crate::debug!("session {who}: malformed: {e}");
                return;
            }
        };
        crate::debug!("session {who} ({id}): {}", message_name(&msg));
        let now = self.now;
        let sfu = &mut self.sfu;
        match msg {
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } | ClientMessage::Ping => {}
            // The transport checks the sources (`parse_sources`); the
            // driver notes them, then hands the core the offer.
            ClientMessage::Offer { sdp, sources } => {
                match (SdpOffer::from_sdp_string(&sdp), parse_sources(&sources)) {
                    (Err(e), _) => {
                        let _ = vela_signaling::fuzz::sdp_reason(&e);
                    }
                    (_, Err(e)) => crate::debug!("  bad sources: {e}"),
                    (Ok(offer), Ok(sources)) => {
                        let sources: Vec<_> = sources
                            .into_iter()
                            .map(|(mid, s)| (Mid::from(mid.as_str()), s))
                            .collect();
                        match sfu
                            .set_track_sources(id, &sources)
                            .and_then(|()| sfu.handle_offer(now, id, offer))
                        {
                            Ok(answer) => {
                                let _ = answer.to_sdp_string();
                                crate::debug!("  answered");
                            }
                            Err(e) => crate::debug!("  refused: {e}"),
                        }
                    }
                }
            }
            ClientMessage::Answer { sdp } => {
                let r = SdpAnswer::from_sdp_string(&sdp)
                    .map_err(|e| e.to_string())
                    .and_then(|a| sfu.handle_answer(now, id, a).map_err(|e| e.to_string()));
                crate::debug!("  {r:?}");
                if r.is_ok()
                    && let Session::Joined { pending_offer, .. } = &mut self.sessions[who]
                {
                    *pending_offer = None;
                }
            }
            ClientMessage::Candidate { candidate, .. } => {
                let r = sfu.handle_candidate(now, id, &candidate);
                crate::debug!("  {r:?}");
            }
            ClientMessage::Mute {
                track_id,
                kind,
                muted,
            } => {
                let track = match track_id.filter(|t| !t.is_empty()).map(|t| t.parse()) {
                    Some(Err(_)) => return,
                    Some(Ok(t)) => Some(t),
                    None => None,
                };
                let kind = kind.as_deref().and_then(parse_kind);
                if track.is_none() && kind.is_none() {
                    return;
                }
                let r = sfu.handle_mute(now, id, track, kind.map(Into::into), muted);
                crate::debug!("  {r:?}");
            }
            ClientMessage::Leave => sfu.handle_leave(now, id, LeaveReason::ClientLeave),
            ClientMessage::TrackSettings {
                track_id,
                enabled,
                width,
                height,
            } => {
                if let Ok(track) = track_id.parse() {
                    let settings = TrackSettings {
                        enabled,
                        width,
                        height,
                    };
                    let r = sfu.handle_track_settings(now, id, track, settings);
                    crate::debug!("  {r:?}");
                }
            }
            ClientMessage::Data {
                payload,
                topic,
                destination_identities,
            } => {
                let Ok(payload) = decode_payload(&payload) else {
                    return;
                };
                let message = DataMessage {
                    topic: topic.filter(|t| !t.is_empty()).map(Arc::from),
                    payload,
                    destinations: destination_identities,
                };
                if let Some(room) = sfu.room_of(id).cloned() {
                    let r = sfu.handle_data(now, &room, Some(id), message);
                    crate::debug!("  {r:?}");
                }
            }
        }
    }

    /// Session `who`'s browser answers the server's pending offer: the
    /// `answer` message it would send.
    fn browser_answer(&mut self, who: usize) -> Option<String> {
        let now = self.now;
        let Session::Joined {
            id,
            pending_offer,
            client,
            ..
        } = &mut self.sessions[who]
        else {
            return None;
        };
        let offer = SdpOffer::from_sdp_string(pending_offer.as_deref()?).ok()?;
        let id = *id;
        let client = client.get_or_insert_with(|| {
            let mut c = Client::new(now, browser_addr(who));
            c.id = Some(id);
            Box::new(c)
        });
        let answer = client.rtc.sdp_api().accept_offer(offer).ok()?;
        Some(serde_json::json!({"type": "answer", "sdp": answer.to_sdp_string()}).to_string())
    }

    /// Session `who`'s browser offers what `spec` says, as the `offer`
    /// message; it applies the server's answer as a browser applies the
    /// `answer` message.
    fn browser_offer(&mut self, who: usize, spec: &str) {
        let now = self.now;
        let Session::Joined { id, client, .. } = &mut self.sessions[who] else {
            return;
        };
        let id = *id;
        let client = client.get_or_insert_with(|| {
            let mut c = Client::new(now, browser_addr(who));
            c.id = Some(id);
            Box::new(c)
        });
        let what = net::Offer {
            audio: spec.contains('a'),
            video: spec.contains('v') || spec.contains('s'),
            simulcast: spec.contains('s'),
            receive: spec.contains('r'),
            data: spec.contains('d'),
        };
        let before = client.mids.len();
        let Some((offer, pending)) = client.offer(what) else {
            return;
        };
        // What the page says its new sending m-lines carry (`S`: the video
        // is a screen, `A`: the audio is the screen's, `X`: the video
        // claims to be a microphone, which does not fit its kind).
        let mut sources = serde_json::Map::new();
        for (mid, kind, dir) in &client.mids[before..] {
            let source = match kind {
                _ if !dir.is_sending() => None,
                MediaKind::Video if spec.contains('X') => Some("microphone"),
                MediaKind::Video if spec.contains('S') => Some("screen"),
                MediaKind::Audio if spec.contains('A') => Some("screen_audio"),
                _ => None,
            };
            if let Some(source) = source {
                sources.insert(mid.to_string(), source.into());
            }
        }
        let text = serde_json::json!({
            "type": "offer",
            "sdp": offer.to_sdp_string(),
            "sources": sources,
        })
        .to_string();
        crate::debug!("session {who} ({id}): browser offer {spec}");
        let Ok(ClientMessage::Offer { sdp, sources }) = decode_client_message(&text) else {
            return;
        };
        let sources: Vec<_> = match parse_sources(&sources) {
            Ok(s) => s
                .into_iter()
                .map(|(mid, s)| (Mid::from(mid.as_str()), s))
                .collect(),
            Err(e) => panic!("the page's own sources refused: {e}"),
        };
        let answer = SdpOffer::from_sdp_string(&sdp)
            .map_err(|e| e.to_string())
            .and_then(|o| {
                self.sfu
                    .set_track_sources(id, &sources)
                    .and_then(|()| self.sfu.handle_offer(now, id, o))
                    .map_err(|e| e.to_string())
            })
            .and_then(|a| {
                SdpAnswer::from_sdp_string(&a.to_sdp_string()).map_err(|e| e.to_string())
            });
        crate::debug!("  answer: {:?}", answer.as_ref().map(|_| ()));
        if let (
            Ok(answer),
            Session::Joined {
                client: Some(c), ..
            },
        ) = (answer, &mut self.sessions[who])
        {
            let _ = c.rtc.sdp_api().accept_answer(pending, answer);
        }
    }

    /// Session `who`'s browser sends a frame on each m-line it sends.
    fn browser_media(&mut self, who: usize, key: bool) {
        if let Session::Joined {
            client: Some(c), ..
        } = &mut self.sessions[who]
        {
            c.write_media(self.now, key);
        }
    }
}

/// Where session `who`'s browser is.
fn browser_addr(who: usize) -> std::net::SocketAddr {
    net::addr(10 + who as u8, 5000)
}

fn message_name(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Leave => "leave",
        ClientMessage::Ping => "ping",
        ClientMessage::TrackSettings { .. } => "track_settings",
        ClientMessage::Data { .. } => "data",
        ClientMessage::Resume { .. } => "resume",
    }
}

fn signal_name(s: &Signal) -> String {
    let d = format!("{s:?}");
    d.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}
