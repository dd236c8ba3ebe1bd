//! The relay between cores: one room spread over several [`crate::Sfu`]s.
//!
//! A *core* is one `Sfu` (one media shard of one node). Every pair of cores
//! holding a room is joined by a **link** (a full mesh, never multi-hop: a
//! core sends over a link only its *local* publishers' media and its local
//! participants' state, never what it received over another link). To the
//! core a link is an opaque [`LinkId`] chosen by the shell, which carries
//! [`RelayMessage`]s: [`RelayMessage::Control`] reliably and in order,
//! [`RelayMessage::Media`] as unreliable datagrams (an in-process channel
//! between the shards of one node, one QUIC connection per node pair
//! between nodes). [`wire`] turns them into bytes and back.
//!
//! The shell calls [`crate::Sfu::handle_link_room`] when a room is (also)
//! held by the core behind a link, [`crate::Sfu::handle_relay`] with what
//! arrives on a link, and [`crate::Sfu::handle_link_down`] when a link is
//! gone; it sends [`crate::Output::Relay`] on the link it names.
//!
//! What crosses a link:
//! - the local participants of each room both hold (joined, updated, left),
//!   their tracks (published, unpublished, muted) with what a receiving core
//!   needs to feed its own subscribers (kind, simulcast rids, codecs);
//! - per remote track, the **demand**: a bit per simulcast layer some local
//!   subscriber receives or switches to (bit 0 for a single-layer track; 0
//!   for none). The origin forwards only demanded layers, once per link,
//!   however many subscribers the far core feeds from them;
//! - layer costs (periodically, so the far core allocates layers it does
//!   not receive yet), keyframe requests, NACKs (answered from a bounded
//!   history of relayed packets at the origin), data messages, and server-API
//!   operations on a participant that lives on the other core.
//!
//! Speaker levels cross inside the media: every relayed audio packet
//! carries its RFC 6464 level, which the receiving core's speaker detector
//! observes as it does for local audio. For participants whose audio a core
//! does not receive (nobody there subscribes to it), the origin's smoothed
//! levels come as [`Control::Speakers`] every speaker interval while they
//! are above silence.
//!
//! Linking a room is a handshake: the side the shell asks sends
//! [`Control::RoomLinked`] and its state; the other side, if it holds the
//! room, links it and answers the same way (else it answers
//! [`Control::RoomUnlinked`]). Each `RoomLinked` names the sender's
//! participants and tracks, so a link that went down on one side only is
//! reconciled when it is linked again, and resets what the sender demanded
//! (sent again after it). A core that receives packets of a track it does
//! not know tells the origin it wants none of it. Room events
//! ([`crate::RoomEvent`]) stay local: each core reports its own
//! participants, once.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::id::{ParticipantId, RoomId, TrackId};
use crate::signal::{LeaveReason, ParticipantInfo, Permissions, TrackKind};

pub mod wire;

pub(crate) mod link;

/// A room's server-API settings as they cross a link (see
/// [`crate::RoomOptions`]); the empty timeout stays each core's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRoomOptions {
    /// The participant limit (0: the server's default).
    pub max_participants: u32,
    /// Free text for the integration.
    #[serde(default)]
    pub metadata: String,
}

/// A link to another core, as the shell numbers it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LinkId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link{}", self.0)
    }
}

/// One message on a link.
#[derive(Debug, Clone)]
pub enum RelayMessage {
    /// State and requests: sent reliably and in order.
    Control(Control),
    /// One media packet: sent unreliably (a datagram).
    Media(RelayPacket),
}

/// The most simulcast layers a relayed track may have (a bit each in a demand).
pub const MAX_LAYERS: usize = 8;

/// The most sequence numbers one [`Control::Nack`] may carry.
pub const MAX_NACKS_PER_MESSAGE: usize = 64;

/// The most codecs one [`RelayTrack`] may describe.
pub const MAX_CODECS_PER_TRACK: usize = 16;

/// The most remote tracks a core keeps from one link; more are refused.
pub const MAX_TRACKS_PER_LINK: usize = 4096;

/// The most remote participants a core keeps from one link; more are refused.
pub const MAX_PARTICIPANTS_PER_LINK: usize = 4096;

/// One link's relay figures, as this core sees them (for `/metrics`): the
/// counters since the link came up, and what it carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayLinkStats {
    /// The link.
    pub link: LinkId,
    /// Rooms relayed over it.
    pub rooms: u32,
    /// Participants of the far core known here.
    pub remote_participants: u32,
    /// Tracks of the far core known here.
    pub remote_tracks: u32,
    /// Layers (track, layer pairs) this core sends over it now (the far
    /// core's demand).
    pub layers_sent: u32,
    /// Layers this core receives over it now (its own demand).
    pub layers_received: u32,
    /// Media packets sent (retransmissions included).
    pub packets_sent: u64,
    /// Their payload bytes.
    pub bytes_sent: u64,
    /// Media packets received.
    pub packets_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Packets found missing and NACKed (each try counted).
    pub nacks_sent: u64,
    /// Sequence numbers the far core NACKed.
    pub nacks_received: u64,
    /// Packets sent again to answer them.
    pub retransmits: u64,
}

/// A published track as the receiving core needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayTrack {
    /// The track (its id is unique in the cluster).
    pub id: TrackId,
    /// Audio or video.
    pub kind: TrackKind,
    /// Muted by its publisher or the server API.
    pub muted: bool,
    /// What it carries (absent from an older node: by its kind).
    #[serde(default)]
    pub source: Option<crate::signal::TrackSource>,
    /// Its simulcast layers' rids, lowest first (empty: one layer). The
    /// layer index of a [`RelayPacket`] and the bits of a demand count in
    /// this order.
    pub rids: Vec<String>,
    /// The codecs its publisher negotiated (payload type and parameters),
    /// so the receiving core picks each subscriber's payload type for a
    /// packet's [`RelayPacket::pt`].
    pub codecs: Vec<str0m::format::PayloadParams>,
}

/// The control messages of a link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// The sender holds `room` and links it over this link; its state of the
    /// room follows (`ParticipantJoined` and `TrackPublished` for each).
    /// A core that does not hold the room answers `RoomUnlinked`; one that
    /// does links the room too, if it had not, and
    /// (unless it is itself an answer) answers with its own `RoomLinked`
    /// and state. Either way the receiver drops what it knew of the
    /// sender's participants and tracks in the room that the lists no
    /// longer name (a link that went down on one side only lost their
    /// leaves), and sends its demand again. Other messages of a room not
    /// linked over the link are dropped as stale.
    RoomLinked {
        /// The room.
        room: RoomId,
        /// This is the answer to the other side's `RoomLinked`.
        #[serde(default)]
        answer: bool,
        /// The sender's participants in the room now.
        #[serde(default)]
        participants: Vec<ParticipantId>,
        /// Their tracks now.
        #[serde(default)]
        tracks: Vec<TrackId>,
        /// The room's server-API settings on the sender, when it has any
        /// (it was created through the server API): a core whose part of
        /// the room was opened by a join, with defaults, takes them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        options: Option<RelayRoomOptions>,
    },
    /// The sender no longer holds `room` (or unlinked it): its participants
    /// there are gone.
    RoomUnlinked {
        /// The room.
        room: RoomId,
    },
    /// A local participant of the sender is in the room (joined, or present
    /// when the room was linked); its tracks follow as `TrackPublished`.
    ParticipantJoined {
        /// The room.
        room: RoomId,
        /// The participant (its `tracks` are informative; `TrackPublished`
        /// carries what subscribing needs).
        info: ParticipantInfo,
    },
    /// A local participant's details changed (permissions, name).
    ParticipantUpdated {
        /// The room.
        room: RoomId,
        /// The participant now.
        info: ParticipantInfo,
    },
    /// A local participant left the room.
    ParticipantLeft {
        /// The room.
        room: RoomId,
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A local participant publishes a track.
    TrackPublished {
        /// The room.
        room: RoomId,
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: RelayTrack,
    },
    /// A local participant's track is gone.
    TrackUnpublished {
        /// The room.
        room: RoomId,
        /// The publisher.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
    },
    /// A local track was muted or unmuted.
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
    /// The layers of the receiver's `track` the sender's subscribers need
    /// now: a bit per layer index ([`RelayTrack::rids`] order; bit 0 for a
    /// single-layer track); 0 for none. Replaces the previous demand.
    Demand {
        /// The (receiver's local) track.
        track: TrackId,
        /// Layers wanted.
        layers: u32,
    },
    /// What each layer of a local track costs (bits/s, measured or a
    /// nominal cost for a layer paused or starting), lowest first; sent
    /// periodically while the room is linked.
    LayerBitrates {
        /// The track.
        track: TrackId,
        /// Bits/s per layer.
        bitrates: Vec<u64>,
    },
    /// The sender's subscribers need a keyframe of these layers of the
    /// receiver's track (bit per layer; 0: whatever the origin picks).
    KeyframeRequest {
        /// The (receiver's local) track.
        track: TrackId,
        /// Layers.
        layers: u32,
    },
    /// Relayed packets the sender missed: the origin sends them again from
    /// its history (at most [`MAX_NACKS_PER_MESSAGE`]).
    Nack {
        /// The (receiver's local) track.
        track: TrackId,
        /// The layer index (0 for a single-layer track).
        layer: u8,
        /// Relay sequence numbers.
        seqs: Vec<u64>,
    },
    /// The smoothed audio levels (-dBov) of the sender's participants of the
    /// room heard lately; sent every speaker interval while someone speaks.
    /// The receiver uses them for participants whose audio it does not
    /// receive (their levels otherwise come inside the relayed audio).
    Speakers {
        /// The room.
        room: RoomId,
        /// Participant and level.
        levels: Vec<(ParticipantId, i8)>,
    },
    /// A data message for the receiver's local participants of the room.
    Data {
        /// The room.
        room: RoomId,
        /// The sending participant (`None`: the server API).
        from: Option<ParticipantId>,
        /// The topic.
        topic: Option<String>,
        /// The payload.
        payload: Vec<u8>,
        /// Identities to deliver to; empty: everyone but the sender.
        destinations: Vec<String>,
    },
    /// Server API: remove the receiver's local participant `identity`.
    Remove {
        /// The room.
        room: RoomId,
        /// The participant's identity.
        identity: String,
    },
    /// The same identity joined the room on the sender's core: the
    /// receiver's local participant of that identity leaves with
    /// `duplicate_identity`, as it would for a join on its own core.
    Replace {
        /// The room.
        room: RoomId,
        /// The participant's identity.
        identity: String,
    },
    /// Server API: mute or unmute a track of the receiver's local participant.
    MuteTrack {
        /// The room.
        room: RoomId,
        /// The participant's identity.
        identity: String,
        /// The track.
        track: TrackId,
        /// Muted now.
        muted: bool,
    },
    /// Server API: change what the receiver's local participant may do.
    UpdatePermissions {
        /// The room.
        room: RoomId,
        /// The participant's identity.
        identity: String,
        /// What it may do now.
        permissions: Permissions,
    },
}

impl Control {
    /// The room the message is about, if it names one.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            Control::RoomLinked { room, .. }
            | Control::RoomUnlinked { room }
            | Control::ParticipantJoined { room, .. }
            | Control::ParticipantUpdated { room, .. }
            | Control::ParticipantLeft { room, .. }
            | Control::TrackPublished { room, .. }
            | Control::TrackUnpublished { room, .. }
            | Control::TrackMuted { room, .. }
            | Control::Speakers { room, .. }
            | Control::Data { room, .. }
            | Control::Remove { room, .. }
            | Control::Replace { room, .. }
            | Control::MuteTrack { room, .. }
            | Control::UpdatePermissions { room, .. } => Some(room),
            Control::Demand { .. }
            | Control::LayerBitrates { .. }
            | Control::KeyframeRequest { .. }
            | Control::Nack { .. } => None,
        }
    }
}

/// One RTP packet of a track, relayed from the core its publisher is on
/// (the fields of a [`crate::Packet`] a receiving core cannot re-read from
/// the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPacket {
    /// The track (the origin's).
    pub track: TrackId,
    /// The simulcast layer index ([`RelayTrack::rids`] order), `None` for a
    /// single-layer track.
    pub layer: Option<u8>,
    /// The publisher's extended RTP sequence number in this layer: gaps on
    /// the link are NACKed by it, and a subscriber's numbering follows it.
    pub seq: u64,
    /// The extended RTP time, in the clock rate of the codec of `pt`.
    pub time: u64,
    /// The publisher's payload type (see [`RelayTrack::codecs`]).
    pub pt: u8,
    /// The RTP marker bit.
    pub marker: bool,
    /// Audio: the RFC 6464 level (-dBov), if the publisher sent one.
    pub audio_level: Option<i8>,
    /// Audio: the voice activity flag of the level extension.
    pub voice_activity: Option<bool>,
    /// The origin's publication epoch (low bits): it changes when the
    /// track's source changes (a handover), so subscribers re-base.
    pub epoch: u16,
    /// The RTP payload.
    pub payload: Arc<[u8]>,
}
