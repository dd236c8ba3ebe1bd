//! The WebSocket messages (docs/protocol.md).

use serde::{Deserialize, Serialize};

use crate::domain::ice::IceServer;
use vela_media::core::{
    ConnectionQuality, LeaveReason, ParticipantId, ParticipantInfo, Permissions, TrackId,
    TrackInfo, TrackKind, TrackSource,
};

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Join a room: the one named in a room token, or `room` with an
    /// account access token.
    Join {
        /// A room token, or the access token of a signed-in device.
        token: String,
        /// The room; required with an access token, and must match a room token's.
        #[serde(default)]
        room: Option<String>,
        /// A display name overriding the token's.
        #[serde(default)]
        name: Option<String>,
        /// Take over this participant (the same account's, on another
        /// device) instead of joining as a new one: a call handover.
        #[serde(default)]
        take_over: Option<String>,
        /// With `take_over` outside a call room: the taken-over session's
        /// resume token, proof of being the same client.
        #[serde(default)]
        resume_token: Option<String>,
    },
    /// The client's SDP offer.
    Offer {
        /// The SDP.
        sdp: String,
        /// What its m-lines carry, by mid (`camera`, `microphone`,
        /// `screen`, `screen_audio`); an m-line not named is a camera or a
        /// microphone by its kind.
        #[serde(default)]
        sources: std::collections::BTreeMap<String, String>,
    },
    /// The client's answer to the server's offer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:...` value.
        candidate: String,
        /// The m-line it belongs to; accepted as browsers send it, but the
        /// server needs only the candidate (one transport, bundled).
        #[serde(default)]
        #[allow(dead_code)]
        sdp_mid: Option<String>,
    },
    /// The client muted or unmuted a track.
    Mute {
        /// The track's id; empty to name it by kind.
        #[serde(default)]
        track_id: Option<String>,
        /// The track's kind, when no id is given.
        #[serde(default)]
        kind: Option<String>,
        /// Muted now.
        muted: bool,
    },
    /// Leave the room.
    Leave,
    /// Heartbeat.
    Ping,
    /// A subscriber's wishes for a remote track: receive it or not, and the
    /// size it is rendered at (adaptive stream).
    TrackSettings {
        /// The remote track.
        track_id: String,
        /// Receive it (false: muted locally, unsubscribed or hidden).
        enabled: bool,
        /// Rendered width in CSS pixels, if known.
        #[serde(default)]
        width: Option<u32>,
        /// Rendered height in CSS pixels, if known.
        #[serde(default)]
        height: Option<u32>,
    },
    /// A data message to the others in the room (needs canPublishData).
    Data {
        /// The payload, base64 (standard alphabet).
        payload: String,
        /// A topic the receivers can filter on.
        #[serde(default)]
        topic: Option<String>,
        /// Identities to send to; empty or absent: everyone else.
        #[serde(default)]
        destination_identities: Vec<String>,
    },
    /// Instead of `join` on a new socket: continue a session whose socket dropped.
    Resume {
        /// The participant id of the `joined` message.
        participant_id: String,
        /// The `resume_token` of the `joined` message.
        resume_token: String,
    },
}

/// A message to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The join succeeded.
    Joined {
        /// The room.
        room: &'a str,
        /// This participant.
        participant: &'a ParticipantInfo,
        /// The others already there.
        participants: &'a [ParticipantInfo],
        /// Lets a new socket take this session over (`resume`) if this one drops.
        resume_token: &'a str,
        /// The token may moderate this room (roomAdmin): the server API's
        /// participant operations accept it.
        can_admin: bool,
        /// STUN/TURN servers for the client's peer connection (as WebRTC's
        /// `RTCIceServer`s), with TURN credentials for this participant;
        /// empty when none are configured.
        ice_servers: &'a [IceServer],
    },
    /// The answer to the client's offer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A server offer.
    Offer {
        /// The SDP.
        sdp: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: &'a ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        participant_id: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A track was published.
    TrackPublished {
        /// By whom.
        participant_id: ParticipantId,
        /// The track.
        track: &'a TrackInfo,
    },
    /// A track is gone.
    TrackUnpublished {
        /// Whose.
        participant_id: ParticipantId,
        /// Which.
        track_id: TrackId,
    },
    /// A track was muted or unmuted.
    TrackMuted {
        /// Whose.
        participant_id: ParticipantId,
        /// Which.
        track_id: TrackId,
        /// Audio or video.
        kind: TrackKind,
        /// What it carries (a publisher's own screen share is not its camera).
        source: TrackSource,
        /// Muted now.
        muted: bool,
    },
    /// Participants' connection quality as the server measures it, those
    /// that changed since this session was last told (all the first time).
    ConnectionQuality {
        /// One entry per participant that changed.
        updates: Vec<QualityEntry>,
    },
    /// A data message from another participant, or from the server API
    /// (`participant_id` absent).
    Data {
        /// The sender.
        #[serde(skip_serializing_if = "Option::is_none")]
        participant_id: Option<ParticipantId>,
        /// The sender's topic.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        /// The payload, base64 (standard alphabet).
        payload: String,
    },
    /// What this participant may do changed (the server API).
    PermissionsChanged {
        /// The new permissions.
        permissions: Permissions,
    },
    /// The session ended.
    Left {
        /// Why.
        reason: LeaveReason,
    },
    /// The last message was refused.
    Error {
        /// An HTTP-like status.
        code: u16,
        /// Why.
        message: &'a str,
    },
    /// Heartbeat answer.
    Pong,
    /// Who speaks now, loudest first (at most five times a second).
    ActiveSpeakers {
        /// The speakers.
        speakers: Vec<SpeakerEntry>,
    },
    /// To a publisher: the simulcast layers (rids) of its track that anyone
    /// needs; it may pause the others.
    LayersNeeded {
        /// The track.
        track_id: TrackId,
        /// The rids to keep sending.
        rids: &'a [String],
    },
}

/// One entry of `connection_quality`.
#[derive(Debug, Serialize)]
pub struct QualityEntry {
    /// Who.
    pub participant_id: ParticipantId,
    /// `good`, `fair` or `poor`.
    pub quality: ConnectionQuality,
    /// The mean opinion score behind it, 1.0 to 4.5.
    pub score: f32,
}

/// One entry of `active_speakers`.
#[derive(Debug, Serialize)]
pub struct SpeakerEntry {
    /// Who.
    pub participant_id: ParticipantId,
    /// Linear audio level, 0.0 to 1.0.
    pub level: f32,
}

/// The most m-lines an `offer`'s `sources` may name (as many as a
/// participant may publish, with room to spare).
pub const MAX_OFFER_SOURCES: usize = 32;

/// Checks an `offer`'s `sources` (mid -> source name): at most
/// [`MAX_OFFER_SOURCES`], each a known source on a plausible mid.
pub fn parse_sources(
    sources: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, TrackSource)>, String> {
    if sources.len() > MAX_OFFER_SOURCES {
        return Err(format!("at most {MAX_OFFER_SOURCES} sources"));
    }
    sources
        .iter()
        .map(|(mid, source)| {
            // A mid is an SDP token; str0m keeps at most 16 bytes of it.
            if mid.is_empty() || mid.len() > 16 || !mid.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("malformed mid {mid:?}"));
            }
            let s =
                TrackSource::parse(source).ok_or_else(|| format!("unknown source {source:?}"))?;
            Ok((mid.clone(), s))
        })
        .collect()
}

/// Parses a track kind as the protocol spells it.
pub fn parse_kind(s: &str) -> Option<TrackKind> {
    match s {
        "audio" => Some(TrackKind::Audio),
        "video" => Some(TrackKind::Video),
        _ => None,
    }
}
