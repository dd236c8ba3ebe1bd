//! What a webhook delivers: one JSON object per event, and the translation
//! from the media core's room events and the calls' notices.

use std::collections::HashMap;

use serde::Serialize;
use vela_media::core::{ParticipantId, ParticipantInfo, RoomEvent, RoomId, TrackId, TrackKind};

use crate::call::state::{Call, Notice};

/// One webhook delivery's body.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEvent {
    /// Unique per event (`EV_` and 16 hex digits); the same on every retry,
    /// so receivers can drop duplicates.
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
    pub account_id: Option<crate::ids::AccountId>,
    /// The device that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<crate::ids::DeviceId>,
}

/// A room in an event.
#[derive(Debug, Clone, Serialize)]
pub struct RoomRef {
    /// Its name.
    pub name: RoomId,
}

/// A participant in an event.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantRef {
    /// The participant id in the room.
    pub id: ParticipantId,
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
    /// Audio or video, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<TrackKind>,
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("EV_{hex}")
}

impl WebhookEvent {
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
#[derive(Debug, Default)]
pub(crate) struct Translator {
    participants: HashMap<(RoomId, ParticipantId), ParticipantRef>,
    tracks: HashMap<TrackId, TrackKind>,
}

impl Translator {
    fn who(&self, room: &RoomId, p: ParticipantId) -> ParticipantRef {
        self.participants
            .get(&(room.clone(), p))
            .cloned()
            .unwrap_or_else(|| ParticipantRef {
                id: p,
                identity: String::new(),
                name: String::new(),
                account: None,
            })
    }

    /// The webhook event for a room event, if it has one.
    pub fn room_event(&mut self, e: RoomEvent, now: u64) -> Option<WebhookEvent> {
        let ev = |name, room: &RoomId| {
            let mut w = WebhookEvent::new(name, now);
            w.room = Some(RoomRef { name: room.clone() });
            w
        };
        match e {
            RoomEvent::RoomStarted { room } => Some(ev("room_started", &room)),
            RoomEvent::RoomFinished { room } => {
                self.participants.retain(|(r, _), _| *r != room);
                Some(ev("room_finished", &room))
            }
            RoomEvent::ParticipantJoined { room, participant } => {
                let ParticipantInfo {
                    id,
                    identity,
                    name,
                    account,
                    ..
                } = participant;
                let who = ParticipantRef {
                    id,
                    identity,
                    name,
                    account,
                };
                self.participants.insert((room.clone(), id), who.clone());
                let mut w = ev("participant_joined", &room);
                w.participant = Some(who);
                Some(w)
            }
            RoomEvent::ParticipantLeft {
                room,
                participant,
                reason,
            } => {
                let mut w = ev("participant_left", &room);
                w.participant = Some(self.who(&room, participant));
                w.reason = Some(reason.as_str());
                self.participants.remove(&(room, participant));
                Some(w)
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
                w.track = Some(TrackRef {
                    id: track,
                    kind: Some(kind),
                });
                Some(w)
            }
            RoomEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => {
                let mut w = ev("track_unpublished", &room);
                w.participant = Some(self.who(&room, participant));
                w.track = Some(TrackRef {
                    id: track,
                    kind: self.tracks.remove(&track),
                });
                Some(w)
            }
            _ => None,
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
        w.call = Some(*call);
        w.account_id = account;
        w.device_id = device;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vela_media::core::{LeaveReason, Permissions};

    #[test]
    fn a_leave_names_the_participant_that_joined() {
        let mut t = Translator::default();
        let room = RoomId::new("r").expect("room");
        let p = ParticipantId(7);
        let joined = t.room_event(
            RoomEvent::ParticipantJoined {
                room: room.clone(),
                participant: ParticipantInfo {
                    id: p,
                    identity: "alice".into(),
                    name: "Alice".into(),
                    account: None,
                    device: None,
                    tracks: vec![],
                    permissions: Permissions::default(),
                },
            },
            1,
        );
        assert_eq!(joined.map(|e| e.event), Some("participant_joined"));
        let left = t
            .room_event(
                RoomEvent::ParticipantLeft {
                    room: room.clone(),
                    participant: p,
                    reason: LeaveReason::Removed,
                },
                2,
            )
            .expect("event");
        let who = left.participant.expect("participant");
        assert_eq!(
            (who.identity.as_str(), left.reason),
            ("alice", Some("removed"))
        );
        assert!(t.participants.is_empty());
    }
}
