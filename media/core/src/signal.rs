//! What the core tells participants and the outside world.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use str0m::change::SdpOffer;
use str0m::media::MediaKind;

use crate::id::{ConnectionId, ParticipantId, RoomId, TrackId};

/// The kind of media a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// Audio (Opus).
    Audio,
    /// Video (VP8 or H264).
    Video,
}

impl From<MediaKind> for TrackKind {
    fn from(k: MediaKind) -> Self {
        match k {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        }
    }
}

impl From<TrackKind> for MediaKind {
    fn from(k: TrackKind) -> Self {
        match k {
            TrackKind::Audio => MediaKind::Audio,
            TrackKind::Video => MediaKind::Video,
        }
    }
}

/// What a track carries, as its publisher says (docs/protocol.md): a screen
/// share is shown apart from the cameras, on the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// A camera (video tracks, unless the publisher says otherwise).
    Camera,
    /// A microphone (audio tracks, unless the publisher says otherwise).
    Microphone,
    /// A shared screen, window or tab.
    Screen,
    /// The audio of a shared screen or tab.
    ScreenAudio,
}

impl TrackSource {
    /// What a track of `kind` carries when its publisher did not say.
    pub fn default_for(kind: TrackKind) -> Self {
        match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        }
    }

    /// Parses the protocol's spelling (`camera`, `microphone`, `screen`, `screen_audio`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "camera" => Some(TrackSource::Camera),
            "microphone" => Some(TrackSource::Microphone),
            "screen" => Some(TrackSource::Screen),
            "screen_audio" => Some(TrackSource::ScreenAudio),
            _ => None,
        }
    }

    /// Whether a track of `kind` can carry this (a camera is no audio).
    pub fn fits(self, kind: TrackKind) -> bool {
        match self {
            TrackSource::Camera | TrackSource::Screen => kind == TrackKind::Video,
            TrackSource::Microphone | TrackSource::ScreenAudio => kind == TrackKind::Audio,
        }
    }
}

/// How a participant reaches the server; decides how subscriptions are negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A signaling session (WebSocket): the server renegotiates as tracks come and go.
    Session,
    /// A WHIP publisher: publishes only; no renegotiation.
    Whip,
    /// A WHEP viewer: the m-lines of its offer are fed from the room's tracks; hidden from others.
    Whep,
}

/// What a participant may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// May publish tracks.
    pub publish: bool,
    /// May receive other participants' tracks.
    pub subscribe: bool,
    /// May send data messages to others.
    pub publish_data: bool,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            publish: true,
            subscribe: true,
            publish_data: true,
        }
    }
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The track's id.
    pub id: TrackId,
    /// Audio or video.
    pub kind: TrackKind,
    /// Whether the publisher muted it.
    pub muted: bool,
    /// What it carries (a camera, a screen share, ...). Absent from an
    /// older node's relay messages: taken as a camera then.
    #[serde(default = "camera")]
    pub source: TrackSource,
}

fn camera() -> TrackSource {
    TrackSource::Camera
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// The participant's id.
    pub id: ParticipantId,
    /// The identity from the token.
    pub identity: String,
    /// The display name.
    pub name: String,
    /// The signaling service's account behind the participant, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The account's device the participant joined from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The tracks it publishes.
    pub tracks: Vec<TrackInfo>,
    /// What it may do.
    pub permissions: Permissions,
}

/// A room as the server API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomInfo {
    /// The room's name.
    pub name: RoomId,
    /// Visible participants now.
    pub num_participants: u32,
    /// Participants that publish at least one track.
    pub num_publishers: u32,
    /// Published tracks.
    pub num_tracks: u32,
    /// The participant limit (0: the server's default).
    pub max_participants: u32,
    /// How long the room stays open while empty, in seconds (`None`: it
    /// closes when the last participant leaves).
    pub empty_timeout_secs: Option<u64>,
    /// Free text for the integration.
    pub metadata: String,
    /// Seconds since the room opened.
    pub age_secs: u64,
}

/// Why a participant left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client asked to leave (or the WebSocket closed, or a WHIP/WHEP DELETE).
    ClientLeave,
    /// The same identity joined the room again; the older session is closed.
    DuplicateIdentity,
    /// ICE or DTLS failed, or the peer never connected in time.
    ConnectionLost,
    /// An operator removed the participant.
    Removed,
    /// The server is shutting down.
    ServerShutdown,
    /// Another device of the same participant took over the call.
    HandedOver,
    /// The room was deleted through the server API.
    RoomDeleted,
    /// Its connection could not keep up with what the room sent it: the
    /// messages waiting for it reached the limit.
    TooSlow,
}

impl LeaveReason {
    /// The reason as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::ClientLeave => "client_leave",
            LeaveReason::DuplicateIdentity => "duplicate_identity",
            LeaveReason::ConnectionLost => "connection_lost",
            LeaveReason::Removed => "removed",
            LeaveReason::ServerShutdown => "server_shutdown",
            LeaveReason::HandedOver => "handed_over",
            LeaveReason::RoomDeleted => "room_deleted",
            LeaveReason::TooSlow => "too_slow",
        }
    }
}

/// A message for one participant's signaling connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Signal {
    /// The server renegotiates; the client answers with [`crate::Sfu::handle_answer`].
    Offer(SdpOffer),
    /// Someone entered the room.
    ParticipantJoined(ParticipantInfo),
    /// Someone left the room.
    ParticipantLeft {
        /// Who left.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A participant published a track.
    TrackPublished {
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackInfo,
    },
    /// A track is gone.
    TrackUnpublished {
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
    },
    /// A publisher (or the server API) muted or unmuted a track.
    TrackMuted {
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
        /// Its kind, so a publisher told of its own track knows which one.
        kind: TrackKind,
        /// What it carries: a publisher told of its own screen share does
        /// not take it for its camera.
        source: TrackSource,
        /// Muted now.
        muted: bool,
    },
    /// The connection quality of participants of the room as the server
    /// measures it (crate::quality), those that changed since this
    /// connection was last told (all of them the first time).
    ConnectionQuality(Vec<crate::quality::ParticipantQuality>),
    /// To a publisher: the simulcast layers of its track anyone needs now;
    /// it may stop sending the others until they are needed again.
    LayersNeeded {
        /// The track.
        track: TrackId,
        /// The rids to keep sending.
        rids: Vec<String>,
    },
    /// Who is speaking now, loudest first (sent at most once per speaker interval).
    ActiveSpeakers(Vec<crate::speaker::Speaker>),
    /// A data message from another participant (`from`) or the server API.
    Data {
        /// The sender, `None` for the server.
        from: Option<ParticipantId>,
        /// The sender's topic, if any.
        topic: Option<Arc<str>>,
        /// The payload, shared between recipients.
        payload: Arc<[u8]>,
    },
    /// What this participant may do changed (server API).
    PermissionsChanged(Permissions),
    /// A message the client sent on one of its connection's data channels,
    /// for its signaling to read (vela's own clients send nothing there;
    /// LiveKit's send their data packets).
    ChannelData {
        /// The channel's label.
        label: Arc<str>,
        /// Whether it was sent as binary (else text).
        binary: bool,
        /// The message.
        data: Vec<u8>,
    },
    /// This participant was removed from its room; nothing more follows.
    Left {
        /// Why.
        reason: LeaveReason,
    },
}

/// Something that happened in a room, for logs, metrics and integrations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// The first participant entered a room.
    RoomStarted {
        /// The room.
        room: RoomId,
    },
    /// The last participant left a room.
    RoomFinished {
        /// The room.
        room: RoomId,
    },
    /// A participant joined.
    ParticipantJoined {
        /// The room.
        room: RoomId,
        /// The participant as others see it.
        participant: ParticipantInfo,
    },
    /// A participant's media connection is up (ICE and DTLS done).
    ParticipantConnected {
        /// The room.
        room: RoomId,
        /// The participant.
        participant: ParticipantId,
        /// From the join to ICE and DTLS done.
        join_time: std::time::Duration,
    },
    /// A participant left.
    ParticipantLeft {
        /// The room.
        room: RoomId,
        /// The participant.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A participant's call moved to another connection (device); others saw no leave.
    ParticipantHandedOver {
        /// The room.
        room: RoomId,
        /// The participant, as others know it.
        participant: ParticipantId,
        /// The connection that took over.
        to: ConnectionId,
    },
    /// A track was published.
    TrackPublished {
        /// The room.
        room: RoomId,
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
        /// Audio or video.
        kind: TrackKind,
    },
    /// A track was muted or unmuted (by its publisher or the server API).
    TrackMuted {
        /// The room.
        room: RoomId,
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
        /// Muted now.
        muted: bool,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// The room.
        room: RoomId,
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
    },
}
