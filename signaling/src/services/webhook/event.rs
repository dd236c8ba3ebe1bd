//! What a webhook delivers: one JSON object per event, and the translation
//! from the media core's room events and the calls' notices.

use std::collections::HashMap;

use serde::Serialize;
use sha2::Digest;
use vela_media::core::{ParticipantId, ParticipantInfo, RoomEvent, RoomId, TrackId, TrackKind};

use crate::domain::call::state::{Call, Notice};
use crate::domain::livekit;

/// One webhook delivery's body.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEvent {
    /// Unique per event (`EV_` and 16 hex digits); the same on every retry,
    /// so receivers can drop duplicates. Random, except for `call_ended`,
    /// which a call sends once: derived from the call, so that the same end
    /// reported twice (by two nodes recovering it) has one id (see
    /// [`WebhookEvent::once_per_cluster`]).
    pub id: String,
    /// `room_started`, `participant_joined`, `call_ringing`, ...
    pub event: &'static str,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The room, for room events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomRef>,
    /// The participant, for participant and track events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<ParticipantRef>,
    /// The track, for track events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackRef>,
    /// Why a participant left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The call, for call events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<Call>,
    /// The account rung, answering or missing the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<crate::domain::ids::AccountId>,
    /// The device that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<crate::domain::ids::DeviceId>,
}

/// A room in an event.
#[derive(Debug, Clone, Serialize)]
pub struct RoomRef {
    /// Its name.
    pub name: RoomId,
    /// Its LiveKit sid (`RM_<name>`), for LiveKit's webhook receivers.
    pub sid: String,
}

impl RoomRef {
    fn new(name: RoomId) -> Self {
        let sid = livekit::room_sid(name.as_str());
        RoomRef { name, sid }
    }
}

/// A participant in an event.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantRef {
    /// The participant id in the room.
    pub id: ParticipantId,
    /// The id as a LiveKit sid (`PA_<n>`), for LiveKit's webhook receivers.
    pub sid: String,
    /// The identity from its token.
    pub identity: String,
    /// The display name.
    pub name: String,
    /// The account behind it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// A track in an event.
#[derive(Debug, Clone, Serialize)]
pub struct TrackRef {
    /// Its id.
    pub id: TrackId,
    /// The id as a LiveKit sid (`TR_<n>`), for LiveKit's webhook receivers.
    pub sid: String,
    /// Audio or video, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<TrackKind>,
    /// The kind as LiveKit's track type (`AUDIO`, `VIDEO`), when known.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub track_type: Option<&'static str>,
}

impl ParticipantRef {
    fn new(id: ParticipantId, identity: String, name: String, account: Option<String>) -> Self {
        ParticipantRef {
            id,
            sid: livekit::sid(&id.to_string(), livekit::PARTICIPANT),
            identity,
            name,
            account,
        }
    }
}

impl TrackRef {
    fn new(id: TrackId, kind: Option<TrackKind>) -> Self {
        TrackRef {
            id,
            sid: livekit::sid(&id.to_string(), livekit::TRACK),
            kind,
            track_type: kind.map(|k| match k {
                TrackKind::Audio => "AUDIO",
                TrackKind::Video => "VIDEO",
            }),
        }
    }
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("EV_{hex}")
}

/// The id of an event that happens once for `what`: the same on every
/// node that reports it.
fn derived_id(what: &str) -> String {
    let digest = sha2::Sha256::digest(what.as_bytes());
    let hex: String = digest.iter().take(8).map(|x| format!("{x:02x}")).collect();
    format!("EV_{hex}")
}

impl WebhookEvent {
    /// Whether the event's id names the thing that happened rather than
    /// this report of it (`call_ended`): then several nodes may report it,
    /// and a cluster sends only the first (`SET NX` on the id).
    pub fn once_per_cluster(&self) -> bool {
        self.event == "call_ended"
    }

    fn new(event: &'static str, created_at: u64) -> Self {
        WebhookEvent {
            id: new_id(),
            event,
            created_at,
            room: None,
            participant: None,
            track: None,
            reason: None,
            call: None,
            account_id: None,
            device_id: None,
        }
    }
}

/// Turns room events into webhook events; remembers who is in which room
/// so that later events (a leave, a track) name the participant.
///
/// As in LiveKit, `participant_joined` is sent when the participant's media
/// connects (ICE and DTLS done), not when its join is accepted; its tracks
/// published before that are sent right after it. A participant that never
/// connects sends nothing.
#[derive(Debug, Default)]
pub(crate) struct Translator {
    participants: HashMap<(RoomId, ParticipantId), Member>,
    tracks: HashMap<TrackId, TrackKind>,
}

/// A participant of a room as webhooks see it.
#[derive(Debug)]
struct Member {
    who: ParticipantRef,
    /// `participant_joined` was sent (its media connected).
    active: bool,
    /// Its track events from before that, to follow `participant_joined`.
    held: Vec<WebhookEvent>,
}

impl Translator {
    fn who(&self, room: &RoomId, p: ParticipantId) -> ParticipantRef {
        self.participants
            .get(&(room.clone(), p))
            .map(|m| m.who.clone())
            .unwrap_or_else(|| ParticipantRef::new(p, String::new(), String::new(), None))
    }

    /// Sends a participant's event now if its `participant_joined` went out,
    /// holds it until then otherwise.
    fn emit(&mut self, room: &RoomId, p: ParticipantId, w: WebhookEvent) -> Vec<WebhookEvent> {
        match self.participants.get_mut(&(room.clone(), p)) {
            Some(m) if !m.active => {
                m.held.push(w);
                Vec::new()
            }
            _ => vec![w],
        }
    }

    /// The webhook events for a room event, in order (often none or one).
    pub fn room_event(&mut self, e: RoomEvent, now: u64) -> Vec<WebhookEvent> {
        let ev = |name, room: &RoomId| {
            let mut w = WebhookEvent::new(name, now);
            w.room = Some(RoomRef::new(room.clone()));
            w
        };
        match e {
            RoomEvent::RoomStarted { room } => vec![ev("room_started", &room)],
            RoomEvent::RoomFinished { room } => {
                self.participants.retain(|(r, _), _| *r != room);
                vec![ev("room_finished", &room)]
            }
            RoomEvent::ParticipantJoined { room, participant } => {
                let ParticipantInfo {
                    id,
                    identity,
                    name,
                    account,
                    ..
                } = participant;
                let who = ParticipantRef::new(id, identity, name, account);
                // A second connection of the same participant (a handover)
                // keeps what the first one started.
                self.participants.entry((room, id)).or_insert(Member {
                    who,
                    active: false,
                    held: Vec::new(),
                });
                Vec::new()
            }
            RoomEvent::ParticipantConnected {
                room, participant, ..
            } => {
                let Some(m) = self.participants.get_mut(&(room.clone(), participant)) else {
                    return Vec::new();
                };
                if m.active {
                    return Vec::new();
                }
                m.active = true;
                let mut w = ev("participant_joined", &room);
                w.participant = Some(m.who.clone());
                let mut out = vec![w];
                out.append(&mut m.held);
                out
            }
            RoomEvent::ParticipantLeft {
                room,
                participant,
                reason,
            } => {
                let Some(m) = self.participants.remove(&(room.clone(), participant)) else {
                    return Vec::new();
                };
                if !m.active {
                    return Vec::new();
                }
                let mut w = ev("participant_left", &room);
                w.participant = Some(m.who);
                w.reason = Some(reason.as_str());
                vec![w]
            }
            RoomEvent::TrackPublished {
                room,
                participant,
                track,
                kind,
            } => {
                self.tracks.insert(track, kind);
                let mut w = ev("track_published", &room);
                w.participant = Some(self.who(&room, participant));
                w.track = Some(TrackRef::new(track, Some(kind)));
                self.emit(&room, participant, w)
            }
            RoomEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => {
                let kind = self.tracks.remove(&track);
                if let Some(m) = self.participants.get_mut(&(room.clone(), participant))
                    && !m.active
                {
                    // Never announced: forget it rather than report both.
                    m.held
                        .retain(|w| w.track.as_ref().is_none_or(|t| t.id != track));
                    return Vec::new();
                }
                let mut w = ev("track_unpublished", &room);
                w.participant = Some(self.who(&room, participant));
                w.track = Some(TrackRef::new(track, kind));
                vec![w]
            }
            _ => Vec::new(),
        }
    }

    /// The webhook event for a call notice.
    pub fn call_notice(&mut self, n: Notice, now: u64) -> WebhookEvent {
        let (name, call, account, device) = match n {
            Notice::Ringing { call, account } => ("call_ringing", call, Some(account), None),
            Notice::Answered {
                call,
                account,
                device,
            } => ("call_answered", call, Some(account), Some(device)),
            Notice::Ended { call } => ("call_ended", call, None, None),
            Notice::Missed { call, account } => ("call_missed", call, Some(account), None),
        };
        let mut w = WebhookEvent::new(name, now);
        if name == "call_ended" {
            w.id = derived_id(&format!(
                "call_ended/{}/{}/{}",
                call.id, call.created_at, call.caller
            ));
        }
        w.call = Some(*call);
        w.account_id = account;
        w.device_id = device;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vela_media::core::{LeaveReason, Permissions};

    fn joined(room: &RoomId, id: u64, identity: &str) -> RoomEvent {
        RoomEvent::ParticipantJoined {
            room: room.clone(),
            participant: ParticipantInfo {
                id: ParticipantId(id),
                identity: identity.into(),
                name: identity.to_uppercase(),
                account: None,
                device: None,
                tracks: vec![],
                permissions: Permissions::default(),
            },
        }
    }

    fn connected(room: &RoomId, id: u64) -> RoomEvent {
        RoomEvent::ParticipantConnected {
            room: room.clone(),
            participant: ParticipantId(id),
            join_time: Duration::from_millis(5),
        }
    }

    fn published(room: &RoomId, id: u64, track: u64) -> RoomEvent {
        RoomEvent::TrackPublished {
            room: room.clone(),
            participant: ParticipantId(id),
            track: TrackId(track),
            kind: TrackKind::Audio,
        }
    }

    fn left(room: &RoomId, id: u64) -> RoomEvent {
        RoomEvent::ParticipantLeft {
            room: room.clone(),
            participant: ParticipantId(id),
            reason: LeaveReason::Removed,
        }
    }

    fn names(v: Vec<WebhookEvent>) -> Vec<&'static str> {
        v.into_iter().map(|e| e.event).collect()
    }

    #[test]
    fn a_participant_joins_when_its_media_connects_and_its_tracks_follow() {
        let mut t = Translator::default();
        let room = RoomId::new("r").expect("room");
        assert!(t.room_event(joined(&room, 7, "alice"), 1).is_empty());
        assert!(t.room_event(published(&room, 7, 70), 1).is_empty());
        let out = t.room_event(connected(&room, 7), 2);
        assert_eq!(names(out), ["participant_joined", "track_published"]);
        // Later tracks go out at once; a second connect (a handover) is silent.
        assert_eq!(
            names(t.room_event(published(&room, 7, 71), 3)),
            ["track_published"]
        );
        assert!(t.room_event(joined(&room, 7, "alice"), 4).is_empty());
        assert!(t.room_event(connected(&room, 7), 4).is_empty());
        let out = t.room_event(left(&room, 7), 5);
        let leave = out.into_iter().next().expect("participant_left");
        let who = leave.participant.expect("participant");
        assert_eq!(
            (leave.event, who.identity.as_str(), leave.reason),
            ("participant_left", "alice", Some("removed"))
        );
        assert!(t.participants.is_empty());
    }

    #[test]
    fn a_participant_that_never_connects_sends_nothing() {
        let mut t = Translator::default();
        let room = RoomId::new("r").expect("room");
        assert!(t.room_event(joined(&room, 8, "bob"), 1).is_empty());
        assert!(t.room_event(published(&room, 8, 80), 1).is_empty());
        let unpublished = RoomEvent::TrackUnpublished {
            room: room.clone(),
            participant: ParticipantId(8),
            track: TrackId(80),
        };
        assert!(t.room_event(unpublished, 2).is_empty());
        assert!(t.room_event(left(&room, 8), 3).is_empty());
        assert!(t.participants.is_empty());
    }

    #[test]
    fn a_call_end_has_one_id_wherever_it_is_reported() {
        let call: Call = serde_json::from_value(serde_json::json!({
            "id": 7, "room": "call-7", "video": false, "caller": 1,
            "state": "ended", "created_at": 1000, "answered_at": null,
            "ended_at": 2000, "members": []
        }))
        .expect("call");
        let mut t = Translator::default();
        let ended = |t: &mut Translator, now| {
            t.call_notice(
                Notice::Ended {
                    call: Box::new(call.clone()),
                },
                now,
            )
        };
        let (a, b) = (ended(&mut t, 5), ended(&mut Translator::default(), 6));
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("EV_") && a.id.len() == 19, "{}", a.id);
        assert!(a.once_per_cluster());
        let ringing = t.call_notice(
            Notice::Ringing {
                call: Box::new(call.clone()),
                account: crate::domain::ids::AccountId(2),
            },
            5,
        );
        let again = t.call_notice(
            Notice::Ringing {
                call: Box::new(call.clone()),
                account: crate::domain::ids::AccountId(2),
            },
            5,
        );
        assert_ne!(ringing.id, again.id);
        assert!(!ringing.once_per_cluster());
    }
}
