//! The relay: one room over several cores (see [`crate::relay`]).
//!
//! The origin of a track (the core its publisher is on) relays its packets
//! over each link that demands them, once per link, and keeps a short
//! history to answer NACKs. A receiving core keeps the other cores'
//! participants and tracks ("remote") beside its own: local clients see
//! them joined, publishing, muting and leaving as local ones, subscribe to
//! their tracks through the same negotiation, and are fed from the relayed
//! packets by the same fan-out. What local subscribers receive of a remote
//! track is its demand, sent to the origin when it changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::PayloadParams;
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::rtp::SeqNo;

use super::Sfu;
use crate::id::{ConnectionId, ParticipantId, RoomId, TrackId};
use crate::isolation::RtcCall;
use crate::packet::Packet;
use crate::relay::link::{History, Incoming, RemoteParticipant, RemoteTrack};
use crate::relay::{
    Control, LinkId, MAX_LAYERS, MAX_NACKS_PER_MESSAGE, MAX_PARTICIPANTS_PER_LINK,
    MAX_TRACKS_PER_LINK, RelayLinkStats, RelayMessage, RelayPacket, RelayRoomOptions, RelayTrack,
};
use crate::room::RoomOptions;
use crate::signal::{LeaveReason, ParticipantInfo, PeerKind, Signal};
use crate::track::{Layer, Publication, Subscription, SubscriptionState, rid_rank};

/// The largest RTP payload browsers send (their packets stay under ~1200
/// bytes): a relay datagram must fit it and the wire header
/// (`relay::wire::MEDIA_HEADER`), plus the transport's own overhead.
pub const MAX_RELAY_PAYLOAD: usize = 1200;

/// Levels at or below this (-dBov) are not relayed as speaker levels.
const SPEAKER_FLOOR: i8 = -80;

/// How often a core tells an origin that a track it relays is not wanted.
const UNWANTED_REPEAT: Duration = Duration::from_secs(1);

/// How many (link, track) pairs told so are remembered (pruned every 500 ms).
const MAX_UNWANTED: usize = 1024;

/// Relayed sequence numbers and times at or past this are refused.
const MAX_EXTENDED: u64 = 1 << 48;

/// How often missing relayed packets and held-back keyframe requests are
/// looked at without new input.
pub(super) const RELAY_TICK: Duration = Duration::from_millis(20);

/// The demand a remote track's local subscribers make: a bit per layer they
/// receive or switch to (bit 0 for a single-layer track).
fn local_demand(p: &Publication) -> u32 {
    let mut mask = 0u32;
    for s in p.subscribers.iter().filter(|s| !s.paused) {
        if p.layers.is_empty() {
            return 1;
        }
        for l in [s.current, s.target].into_iter().flatten() {
            mask |= 1 << u32::from(l).min(31);
        }
    }
    mask
}

impl Sfu {
    /// The shell says `room` is (`on`) or is no longer held by the core
    /// behind `link`. Linking sends this core's participants and tracks of
    /// the room over the link; the far core answers with its own.
    /// Unlinking drops the far core's participants of the room (they leave
    /// with [`LeaveReason::ConnectionLost`]) and tells it.
    pub fn handle_link_room(&mut self, now: Instant, link: LinkId, room: RoomId, on: bool) {
        self.advance(now);
        if on {
            self.link_room(link, &room, false);
        } else if self.relay.links(&room).contains(&link) {
            self.relay.outputs.push_back((
                link,
                RelayMessage::Control(Control::RoomUnlinked { room: room.clone() }),
            ));
            self.unlink_room(link, &room, LeaveReason::ConnectionLost);
        }
    }

    /// The link is gone (its core or node died): the participants behind
    /// it leave ([`LeaveReason::ConnectionLost`]), their tracks are
    /// unpublished, and what it demanded is no longer sent.
    pub fn handle_link_down(&mut self, now: Instant, link: LinkId) {
        self.advance(now);
        let rooms: Vec<RoomId> = self
            .relay
            .rooms
            .iter()
            .filter(|(_, l)| l.contains(&link))
            .map(|(r, _)| r.clone())
            .collect();
        tracing::info!(%link, rooms = rooms.len(), "relay link down");
        for room in rooms {
            self.unlink_room(link, &room, LeaveReason::ConnectionLost);
        }
        // Anything left from it (a participant of a room never linked).
        let stray: Vec<(ParticipantId, RoomId)> = self
            .relay
            .participants
            .iter()
            .filter(|(_, p)| p.link == link)
            .map(|(id, p)| (*id, p.room.clone()))
            .collect();
        for (p, room) in stray {
            self.remote_left(&room, p, LeaveReason::ConnectionLost);
        }
        self.drop_link_demand(link, None);
        self.relay.outputs.retain(|(l, _)| *l != link);
        self.relay.counters.remove(&link);
    }

    /// A message arrived on `link`. Malformed or out-of-place messages are
    /// counted (`relay_refused`) and dropped.
    pub fn handle_relay(&mut self, now: Instant, link: LinkId, msg: RelayMessage) {
        self.advance(now);
        match msg {
            RelayMessage::Media(p) => self.relay_receive(link, p),
            RelayMessage::Control(c) => {
                self.stats.relay_control_received += 1;
                let _span = tracing::debug_span!("relay", %link).entered();
                // The far core linked a room: this core links it too (and
                // sends its state back). Other messages of a room not linked
                // over this link are stale (sent before an unlink crossed
                // them) and dropped, except the server API's, which act on
                // local participants whatever the link.
                if let Control::RoomLinked {
                    room,
                    answer,
                    participants,
                    tracks,
                    options,
                } = c
                {
                    let linked = self.relay.links(&room).contains(&link);
                    if answer && !linked {
                        // This core unlinked the room meanwhile.
                        self.stats.relay_refused += 1;
                        return;
                    }
                    if !linked && !self.rooms.contains_key(&room) {
                        // Not held here (closed meanwhile, or not yet
                        // opened): the far core unlinks; this core links it
                        // when a participant of its own joins.
                        self.relay.outputs.push_back((
                            link,
                            RelayMessage::Control(Control::RoomUnlinked { room }),
                        ));
                        return;
                    }
                    // What the far core demanded of this core's tracks: it
                    // sends its demand again after its `RoomLinked` (a
                    // demand lost with a link would be sent on forever).
                    self.adopt_options(&room, options);
                    self.drop_link_demand(link, Some(&room));
                    self.reconcile(link, &room, &participants, &tracks);
                    if !answer {
                        self.link_room(link, &room, true);
                    }
                    self.resend_demand(link, &room);
                    return;
                }
                let stale = c
                    .room()
                    .is_some_and(|r| !self.relay.links(r).contains(&link))
                    && !matches!(
                        c,
                        Control::RoomUnlinked { .. }
                            | Control::Remove { .. }
                            | Control::Replace { .. }
                            | Control::MuteTrack { .. }
                            | Control::UpdatePermissions { .. }
                    );
                if stale {
                    self.stats.relay_refused += 1;
                    tracing::debug!("control message of a room not linked; dropped");
                    return;
                }
                self.relay_control(link, c);
            }
        }
    }

    /// A data message or a decode failure the shell saw on a link: counted
    /// as refused relay input.
    pub fn note_relay_malformed(&mut self) {
        self.stats.relay_refused += 1;
    }

    /// The links `room` is relayed over.
    pub fn relay_links(&self, room: &RoomId) -> Vec<LinkId> {
        self.relay.links(room).to_vec()
    }

    /// Per link: what it carries now and its counters, by link.
    pub fn relay_link_stats(&self) -> Vec<RelayLinkStats> {
        let mut links: Vec<LinkId> = self.relay.counters.keys().copied().collect();
        links.extend(self.relay.rooms.values().flatten().copied());
        links.sort();
        links.dedup();
        links
            .into_iter()
            .map(|link| {
                let mut s = self.relay.counters.get(&link).copied().unwrap_or_default();
                s.link = link;
                s.rooms = self
                    .relay
                    .rooms
                    .values()
                    .filter(|l| l.contains(&link))
                    .count() as u32;
                s.remote_participants = self.relay.participants_of_link(link) as u32;
                s.remote_tracks = self.relay.tracks_of_link(link) as u32;
                s.layers_sent = self
                    .relay
                    .demand
                    .values()
                    .flatten()
                    .filter(|(l, _)| *l == link)
                    .map(|(_, m)| m.count_ones())
                    .sum();
                s.layers_received = self
                    .relay
                    .tracks
                    .values()
                    .filter(|t| t.link == link)
                    .map(|t| t.demand_sent.count_ones())
                    .sum();
                s
            })
            .collect()
    }

    /// Whether `participant` lives on another core (behind a link).
    pub fn is_remote(&self, participant: ParticipantId) -> bool {
        self.relay.participants.contains_key(&participant)
    }

    /// The link a remote participant is behind.
    pub fn link_of(&self, participant: ParticipantId) -> Option<LinkId> {
        self.relay.participants.get(&participant).map(|p| p.link)
    }

    // ---- linking ----

    /// Links `room` over `link` and sends this core's state of it; an
    /// `answer` (to the other side's `RoomLinked`) is sent even when the
    /// room was linked already, a link the shell asks for only if not.
    fn link_room(&mut self, link: LinkId, room: &RoomId, answer: bool) {
        let links = self.relay.rooms.entry(room.clone()).or_default();
        let new = !links.contains(&link);
        if !new && !answer {
            return;
        }
        if new {
            links.push(link);
            tracing::info!(%room, %link, "room linked");
        }
        let state = self.room_state(room);
        let mut participants = Vec::new();
        let mut tracks = Vec::new();
        for c in &state {
            match c {
                Control::ParticipantJoined { info, .. } => participants.push(info.id),
                Control::TrackPublished { track, .. } => tracks.push(track.id),
                _ => {}
            }
        }
        let options = self
            .rooms
            .get(room)
            .filter(|r| r.options != RoomOptions::default())
            .map(|r| RelayRoomOptions {
                max_participants: r.options.max_participants,
                metadata: r.options.metadata.clone(),
            });
        let first = Control::RoomLinked {
            room: room.clone(),
            answer,
            participants,
            tracks,
            options,
        };
        for c in std::iter::once(first).chain(state) {
            self.relay
                .outputs
                .push_back((link, RelayMessage::Control(c)));
        }
    }

    /// The far core's server-API settings of `room`: taken when this core's
    /// part was opened by a join (default settings), so the room's
    /// participant limit holds on every core; settings of this core's own
    /// (the API created the room here too) are kept.
    fn adopt_options(&mut self, room: &RoomId, options: Option<RelayRoomOptions>) {
        let (Some(o), Some(r)) = (options, self.rooms.get_mut(room)) else {
            return;
        };
        if r.options == RoomOptions::default() {
            tracing::debug!(%room, max = o.max_participants, "room settings taken from a linked core");
            r.options.max_participants = o.max_participants;
            r.options.metadata = o.metadata;
        }
    }

    /// The far core's state of `room` as it is now: what this core knew of
    /// it that is no longer there goes (its leave or unpublish was lost
    /// with a link).
    fn reconcile(
        &mut self,
        link: LinkId,
        room: &RoomId,
        participants: &[ParticipantId],
        tracks: &[TrackId],
    ) {
        let gone: Vec<ParticipantId> = self
            .relay
            .participants
            .iter()
            .filter(|(id, p)| p.link == link && p.room == *room && !participants.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for p in gone {
            self.remote_left(room, p, LeaveReason::ConnectionLost);
        }
        let stale: Vec<(TrackId, ParticipantId)> = self
            .relay
            .tracks
            .iter()
            .filter(|(id, t)| t.link == link && t.room == *room && !tracks.contains(id))
            .map(|(id, t)| (*id, t.participant))
            .collect();
        for (t, p) in stale {
            self.remote_unpublished(room, p, &[t]);
        }
    }

    /// This core's demand of the far core's tracks in `room`, sent again
    /// (after this core's `RoomLinked`, which made the far core forget it).
    fn resend_demand(&mut self, link: LinkId, room: &RoomId) {
        let kept: Vec<TrackId> = self
            .relay
            .tracks
            .iter_mut()
            .filter(|(_, t)| t.link == link && t.room == *room)
            .map(|(id, t)| {
                // The far core may have forgotten it (its side went down).
                t.demand_sent = 0;
                *id
            })
            .collect();
        for t in kept {
            self.update_demand(t);
        }
    }

    /// This core's participants of `room` and their tracks, as control messages.
    fn room_state(&mut self, room: &RoomId) -> Vec<Control> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut published = Vec::new();
        for c in &r.connections {
            let Some(p) = self.peers.get(c) else {
                continue;
            };
            if !p.is_visible() {
                continue;
            }
            if p.takes_over().is_none() {
                out.push(Control::ParticipantJoined {
                    room: room.clone(),
                    info: p.info(),
                });
            }
            for t in &p.published {
                published.push((*c, p.public_id(), t.id));
            }
        }
        for (c, participant, t) in published {
            if let Some(track) = self.relay_track(c, t) {
                out.push(Control::TrackPublished {
                    room: room.clone(),
                    participant,
                    track,
                });
            }
        }
        out
    }

    /// A local track as a receiving core needs it.
    fn relay_track(&mut self, publisher: ConnectionId, track: TrackId) -> Option<RelayTrack> {
        let peer = self.peers.get_mut(&publisher)?;
        let p = peer.published.iter().find(|p| p.id == track)?;
        let video = p.kind == MediaKind::Video;
        let (id, kind, muted, source) = (p.id, p.kind, p.muted, p.source);
        let rids = p
            .layers
            .iter()
            .take(MAX_LAYERS)
            .map(|l| l.rid.to_string())
            .collect();
        // The publisher's payload types, as its packets' `params` are
        // found (see the drive's `on_rtp`). A poisoned peer is removed by
        // its drive; its track goes with it.
        let codecs = peer
            .rtc
            .call(RtcCall::Poll, |rtc| {
                rtc.codec_config()
                    .params()
                    .iter()
                    .filter(|c| {
                        let codec = c.spec().codec;
                        (video && codec.is_video()) || (!video && codec.is_audio())
                    })
                    .take(crate::relay::MAX_CODECS_PER_TRACK)
                    .copied()
                    .collect::<Vec<PayloadParams>>()
            })
            .unwrap_or_default();
        Some(RelayTrack {
            id,
            kind: kind.into(),
            muted,
            source: Some(source),
            rids,
            codecs,
        })
    }

    fn unlink_room(&mut self, link: LinkId, room: &RoomId, reason: LeaveReason) {
        if let Some(links) = self.relay.rooms.get_mut(room) {
            links.retain(|l| *l != link);
            if links.is_empty() {
                self.relay.rooms.remove(room);
            }
        }
        let gone: Vec<ParticipantId> = self
            .relay
            .participants
            .iter()
            .filter(|(_, p)| p.link == link && p.room == *room)
            .map(|(id, _)| *id)
            .collect();
        for p in gone {
            self.remote_left(room, p, reason);
        }
        self.drop_link_demand(link, Some(room));
        tracing::info!(%room, %link, "room unlinked");
    }

    /// Forgets what `link` demanded (of `room`'s tracks, or of all).
    fn drop_link_demand(&mut self, link: LinkId, room: Option<&RoomId>) {
        let tracks: Vec<TrackId> = self.relay.demand.keys().copied().collect();
        for t in tracks {
            if let Some(room) = room
                && self.track_room(t).as_ref() != Some(room)
            {
                continue;
            }
            self.set_link_demand(link, t, 0);
        }
    }

    fn track_room(&self, track: TrackId) -> Option<RoomId> {
        let pid = self.tracks.get(&track)?;
        self.peers.get(pid).map(|p| p.room().clone())
    }

    // ---- local changes, told to the links ----

    /// A local participant joined a linked room.
    pub(super) fn relay_joined(&mut self, room: &RoomId, info: &ParticipantInfo) {
        self.relay.send_room(
            room,
            &Control::ParticipantJoined {
                room: room.clone(),
                info: info.clone(),
            },
        );
    }

    /// A local participant left a linked room.
    pub(super) fn relay_left(&mut self, room: &RoomId, p: ParticipantId, reason: LeaveReason) {
        self.relay.send_room(
            room,
            &Control::ParticipantLeft {
                room: room.clone(),
                participant: p,
                reason,
            },
        );
    }

    /// A local connection's participant changed (permissions).
    pub(super) fn relay_updated(&mut self, pid: ConnectionId) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        if !p.is_visible() || self.relay.links(p.room()).is_empty() {
            return;
        }
        let (room, info) = (p.room().clone(), p.info());
        self.relay.send_room(
            &room,
            &Control::ParticipantUpdated {
                room: room.clone(),
                info,
            },
        );
    }

    /// A local track was published.
    pub(super) fn relay_published(&mut self, pid: ConnectionId, track: TrackId) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        let room = peer.room().clone();
        if self.relay.links(&room).is_empty() {
            return;
        }
        let participant = peer.public_id();
        let Some(track) = self.relay_track(pid, track) else {
            return;
        };
        let c = Control::TrackPublished {
            room: room.clone(),
            participant,
            track,
        };
        self.relay.send_room(&room, &c);
    }

    /// Local tracks are gone.
    pub(super) fn relay_unpublished(
        &mut self,
        room: &RoomId,
        p: ParticipantId,
        tracks: &[TrackId],
    ) {
        for t in tracks {
            self.relay.demand.remove(t);
            self.relay.history.remove(t);
            self.relay.send_room(
                room,
                &Control::TrackUnpublished {
                    room: room.clone(),
                    participant: p,
                    track: *t,
                },
            );
        }
    }

    /// A local track was muted or unmuted.
    pub(super) fn relay_muted(
        &mut self,
        room: &RoomId,
        p: ParticipantId,
        track: TrackId,
        muted: bool,
    ) {
        self.relay.send_room(
            room,
            &Control::TrackMuted {
                room: room.clone(),
                participant: p,
                track,
                muted,
            },
        );
    }

    /// A data message from a local participant (or the server API) goes to
    /// the other cores of the room too.
    pub(super) fn relay_data(
        &mut self,
        room: &RoomId,
        from: Option<ParticipantId>,
        message: &super::DataMessage,
    ) -> usize {
        let links = self.relay.links(room).len();
        if links == 0 {
            return 0;
        }
        self.relay.send_room(
            room,
            &Control::Data {
                room: room.clone(),
                from,
                topic: message.topic.as_deref().map(str::to_owned),
                payload: message.payload.to_vec(),
                destinations: message.destinations.clone(),
            },
        );
        links
    }

    /// Server API on a participant of another core: sent to its core.
    /// False when no remote participant of `room` has that identity.
    pub(super) fn relay_operation(&mut self, room: &RoomId, identity: &str, c: Control) -> bool {
        let Some(link) = self
            .relay
            .participants
            .values()
            .find(|p| p.room == *room && p.info.identity == identity)
            .map(|p| p.link)
        else {
            return false;
        };
        self.relay
            .outputs
            .push_back((link, RelayMessage::Control(c)));
        true
    }

    /// A remote participant of `room` by identity.
    pub(super) fn remote_participant(
        &self,
        room: &RoomId,
        identity: &str,
    ) -> Option<ParticipantInfo> {
        self.relay
            .participants
            .values()
            .find(|p| p.room == *room && p.info.identity == identity)
            .map(|p| self.remote_info(p))
    }

    /// A remote participant as local clients see it (tracks as relayed).
    fn remote_info(&self, p: &RemoteParticipant) -> ParticipantInfo {
        let mut info = p.info.clone();
        info.tracks = self
            .relay
            .tracks
            .values()
            .filter(|t| t.participant == info.id)
            .map(|t| t.publication.info())
            .collect();
        info.tracks.sort_by_key(|t| t.id);
        info
    }

    /// The remote participants of `room`, by id (one pass over the tracks,
    /// not one per participant: a join lists them all).
    pub(super) fn remote_participants(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        let mut tracks: rustc_hash::FxHashMap<ParticipantId, Vec<crate::signal::TrackInfo>> =
            rustc_hash::FxHashMap::default();
        for t in self.relay.tracks.values().filter(|t| t.room == *room) {
            tracks
                .entry(t.participant)
                .or_default()
                .push(t.publication.info());
        }
        let mut v: Vec<ParticipantInfo> = self
            .relay
            .participants
            .iter()
            .filter(|(_, p)| p.room == *room)
            .map(|(id, p)| {
                let mut info = p.info.clone();
                info.tracks = tracks.remove(id).unwrap_or_default();
                info.tracks.sort_by_key(|t| t.id);
                info
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// A remote participant of `room` with this identity (not a viewer:
    /// viewers are never relayed), and its account and device.
    pub(super) fn remote_by_identity(
        &self,
        room: &RoomId,
        identity: &str,
    ) -> Option<(ParticipantId, Option<(String, String)>)> {
        self.relay
            .participants
            .iter()
            .find(|(_, p)| p.room == *room && p.info.identity == identity)
            .map(|(id, p)| (*id, p.info.account.clone().zip(p.info.device.clone())))
    }

    /// The same identity joined here: its session on another core is
    /// closed there ([`LeaveReason::DuplicateIdentity`]) and leaves this
    /// core's view now. (Two joins racing on two cores, neither knowing of
    /// the other yet, both stay.)
    pub(super) fn replace_remote(&mut self, room: &RoomId, old: ParticipantId) {
        let Some(p) = self.relay.participants.get(&old) else {
            return;
        };
        let c = Control::Replace {
            room: room.clone(),
            identity: p.info.identity.clone(),
        };
        self.relay
            .outputs
            .push_back((p.link, RelayMessage::Control(c)));
        self.remote_left(room, old, LeaveReason::DuplicateIdentity);
    }

    /// How many remote participants `room` has.
    pub(super) fn remote_count(&self, room: &RoomId) -> usize {
        self.relay
            .participants
            .values()
            .filter(|p| p.room == *room)
            .count()
    }

    /// The remote tracks of `room`: (track, publisher, kind).
    pub(super) fn remote_tracks(&self, room: &RoomId) -> Vec<(TrackId, ParticipantId, MediaKind)> {
        let mut v: Vec<_> = self
            .relay
            .tracks
            .values()
            .filter(|t| t.room == *room)
            .map(|t| (t.publication.id, t.participant, t.publication.kind))
            .collect();
        v.sort_by_key(|t| t.0);
        v
    }

    // ---- publications, local or remote ----

    /// The publication of `track`, local or remote.
    pub(super) fn publication_mut(&mut self, track: TrackId) -> Option<&mut Publication> {
        if let Some(pid) = self.tracks.get(&track).copied() {
            return self.peers.get_mut(&pid).and_then(|p| p.publication(track));
        }
        self.relay
            .tracks
            .get_mut(&track)
            .map(|t| &mut t.publication)
    }

    /// The publication of `track`, local or remote.
    pub(super) fn publication_ref(&self, track: TrackId) -> Option<&Publication> {
        if let Some(pid) = self.tracks.get(&track) {
            return self
                .peers
                .get(pid)
                .and_then(|p| p.published.iter().find(|p| p.id == track));
        }
        self.relay.tracks.get(&track).map(|t| &t.publication)
    }

    /// Sends the demand of a remote track when its subscribers' needs changed.
    pub(super) fn update_demand(&mut self, track: TrackId) {
        let Some(t) = self.relay.tracks.get_mut(&track) else {
            return;
        };
        let mask = local_demand(&t.publication);
        if mask == t.demand_sent {
            return;
        }
        tracing::debug!(%track, link = %t.link, from = t.demand_sent, to = mask, "relay demand");
        t.demand_sent = mask;
        self.relay.outputs.push_back((
            t.link,
            RelayMessage::Control(Control::Demand {
                track,
                layers: mask,
            }),
        ));
    }

    /// Asks the origin of a remote track for a keyframe of the layers its
    /// local subscribers use (`mask`: 0 picks them here), throttled.
    pub(super) fn request_remote_keyframe(&mut self, track: TrackId, mask: u32) {
        let now = self.now;
        let interval = self.config.keyframe_interval;
        let Some(t) = self.relay.tracks.get_mut(&track) else {
            return;
        };
        let p = &mut t.publication;
        if p.kind != MediaKind::Video {
            return;
        }
        let mask = if mask != 0 {
            mask
        } else {
            let used = super::forward::keyframe_rids(p);
            p.layers
                .iter()
                .enumerate()
                .filter(|(_, l)| used.contains(&Some(l.rid)))
                .fold(0u32, |m, (i, _)| m | 1 << i)
        };
        // Held back by the throttle, it goes when the throttle opens (see
        // `relay_tick`), for every layer asked meanwhile.
        t.keyframe_mask |= mask;
        if !p.keyframes.request(now, interval) {
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let layers = std::mem::take(&mut t.keyframe_mask);
        self.relay.outputs.push_back((
            t.link,
            RelayMessage::Control(Control::KeyframeRequest { track, layers }),
        ));
    }

    // ---- the origin's side of media ----

    /// Sends a local track's packet over the links that demand its layer:
    /// once per link, kept in the history for their NACKs.
    pub(super) fn relay_packet(
        &mut self,
        track: TrackId,
        layer: Option<u8>,
        epoch: u32,
        packet: &Packet,
    ) {
        let Some(demand) = self.relay.demand.get(&track) else {
            return;
        };
        let li = usize::from(layer.unwrap_or(0));
        if li >= MAX_LAYERS {
            return;
        }
        let bit = 1u32 << li;
        if !demand.iter().any(|(_, m)| m & bit != 0) {
            return;
        }
        // Its low bits: the receiver only looks for a change.
        let epoch = epoch as u16;
        let p = RelayPacket {
            track,
            layer,
            seq: *packet.seq,
            time: packet.time.numer(),
            pt: *packet.pt,
            marker: packet.marker,
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            epoch,
            payload: packet.payload.clone(),
        };
        for (link, m) in demand {
            if m & bit == 0 {
                continue;
            }
            self.stats.relay_packets_sent += 1;
            self.stats.relay_bytes_sent += p.payload.len() as u64;
            let c = self.relay.counters.entry(*link).or_default();
            c.packets_sent += 1;
            c.bytes_sent += p.payload.len() as u64;
            self.relay
                .outputs
                .push_back((*link, RelayMessage::Media(p.clone())));
        }
        let histories = self.relay.history.entry(track).or_default();
        if histories.len() <= li {
            histories.resize_with(li + 1, History::default);
        }
        histories[li].push(p);
    }

    fn set_link_demand(&mut self, link: LinkId, track: TrackId, layers: u32) {
        let d = self.relay.demand.entry(track).or_default();
        d.retain(|(l, _)| *l != link);
        if layers != 0 {
            d.push((link, layers));
        }
        if d.is_empty() {
            self.relay.demand.remove(&track);
            self.relay.history.remove(&track);
        }
    }

    /// Periodic: each local simulcast track's layer costs to the links of
    /// its room, and what remote tracks' subscribers demand now.
    pub(super) fn relay_layer_tick(&mut self) {
        let now = self.now;
        let mut out = Vec::new();
        for peer in self.peers.values() {
            let links = self.relay.links(peer.room());
            if links.is_empty() {
                continue;
            }
            for p in peer.published.iter().filter(|p| p.layers.len() > 1) {
                let bitrates = super::layers::layer_costs(p, now);
                for l in links {
                    out.push((
                        *l,
                        RelayMessage::Control(Control::LayerBitrates {
                            track: p.id,
                            bitrates: bitrates.iter().copied().take(MAX_LAYERS).collect(),
                        }),
                    ));
                }
            }
        }
        self.relay.outputs.extend(out);
        self.relay
            .unwanted
            .retain(|_, t| now.saturating_duration_since(*t) < UNWANTED_REPEAT);
        let remote: Vec<TrackId> = self.relay.tracks.keys().copied().collect();
        for t in remote {
            self.update_demand(t);
        }
    }

    /// Local participants' speaking levels to the links of each linked
    /// room, for cores that do not receive their audio.
    pub(super) fn relay_speakers(&mut self) {
        let now = self.now;
        let mut out = Vec::new();
        for (room, links) in &self.relay.rooms {
            let Some(r) = self.rooms.get(room) else {
                continue;
            };
            // Never a level relayed from elsewhere (no multi-hop), nor a
            // near-silent one: absent, it counts as silent over there.
            let levels: Vec<(ParticipantId, i8)> = r
                .speakers
                .fresh_levels(now)
                .filter(|(p, l)| *l > SPEAKER_FLOOR && !self.relay.participants.contains_key(p))
                .take(MAX_PARTICIPANTS_PER_LINK)
                .collect();
            if levels.is_empty() {
                continue;
            }
            for l in links {
                out.push((
                    *l,
                    RelayMessage::Control(Control::Speakers {
                        room: room.clone(),
                        levels: levels.clone(),
                    }),
                ));
            }
        }
        self.relay.outputs.extend(out);
    }

    /// Levels of the far core's participants whose audio this core does
    /// not receive (nobody here subscribes to it) feed the speaker detector.
    fn remote_speakers(&mut self, link: LinkId, room: &RoomId, levels: &[(ParticipantId, i8)]) {
        let now = self.now;
        let mut heard = false;
        for (p, level) in levels {
            let ours = self
                .relay
                .participants
                .get(p)
                .is_some_and(|x| x.link == link && x.room == *room);
            // Its audio arrives here: its levels come inside it.
            let received = self.relay.tracks.values().any(|t| {
                t.participant == *p && t.publication.kind == MediaKind::Audio && t.demand_sent != 0
            });
            if !ours || received {
                continue;
            }
            if let Some(r) = self.rooms.get_mut(room) {
                r.speakers.set_level(*p, *level, now);
                heard = true;
            }
        }
        if heard {
            let due = now + self.config.speaker_interval;
            if self.speaker_due.is_none_or(|t| t > due) {
                self.speaker_due = Some(due);
            }
        }
    }

    // ---- the receiving side ----

    /// Missing relayed packets asked for again, keyframe requests the
    /// throttle held back sent.
    pub(super) fn relay_tick(&mut self) {
        let now = self.now;
        let interval = self.config.keyframe_interval;
        for (track, t) in &mut self.relay.tracks {
            if t.publication.keyframes.poll(now, interval) {
                let layers = std::mem::take(&mut t.keyframe_mask);
                self.relay.outputs.push_back((
                    t.link,
                    RelayMessage::Control(Control::KeyframeRequest {
                        track: *track,
                        layers,
                    }),
                ));
            }
            for (layer, inc) in t.incoming.iter_mut().enumerate() {
                let seqs = inc.renack(now);
                if !seqs.is_empty() {
                    self.stats.relay_nacks_sent += seqs.len() as u64;
                    self.relay.counters.entry(t.link).or_default().nacks_sent += seqs.len() as u64;
                    self.relay.outputs.push_back((
                        t.link,
                        RelayMessage::Control(Control::Nack {
                            track: *track,
                            layer: layer as u8,
                            seqs,
                        }),
                    ));
                }
            }
        }
    }

    /// Whether missing relayed packets or a held-back keyframe request
    /// want [`Sfu::relay_tick`] soon.
    pub(super) fn relay_waiting(&self) -> bool {
        let interval = self.config.keyframe_interval;
        self.relay.tracks.values().any(|t| {
            t.incoming.iter().any(Incoming::waiting)
                || t.publication.keyframes.due(interval).is_some()
        })
    }

    /// A relayed packet of a remote track: to its local subscribers, as a
    /// local packet goes to them; a gap on the link is NACKed.
    fn relay_receive(&mut self, link: LinkId, rp: RelayPacket) {
        let now = self.now;
        let track = rp.track;
        let Some(t) = self.relay.tracks.get_mut(&track) else {
            // Unpublished, or not yet announced, or forgotten when a link
            // went down on this side only: nothing to feed. The origin is
            // told it is not wanted here (at most once a second per track),
            // or it would send it for as long as it thinks it is.
            self.stats.relay_refused += 1;
            let told = self.relay.unwanted.get(&(link, track));
            if told.is_none_or(|t| now.saturating_duration_since(*t) >= UNWANTED_REPEAT)
                && self.relay.unwanted.len() < MAX_UNWANTED
            {
                self.relay.unwanted.insert((link, track), now);
                self.relay.outputs.push_back((
                    link,
                    RelayMessage::Control(Control::Demand { track, layers: 0 }),
                ));
            }
            return;
        };
        let li = usize::from(rp.layer.unwrap_or(0));
        let simulcast = !t.publication.layers.is_empty();
        // Extended numbers start below 2^32 and grow by one per packet (or
        // the clock): past 2^48 they are garbage, and would overflow the
        // subscribers' offset arithmetic.
        let absurd = rp.seq >= MAX_EXTENDED || rp.time >= MAX_EXTENDED;
        if t.link != link
            || absurd
            || li >= MAX_LAYERS
            || (simulcast && li >= t.publication.layers.len())
        {
            self.stats.relay_refused += 1;
            return;
        }
        let pt = Pt::from(rp.pt);
        let Some(params) = t.codecs.iter().find(|c| c.pt() == pt).copied() else {
            self.stats.relay_refused += 1;
            return;
        };
        if t.incoming.len() <= li {
            t.incoming.resize_with(li + 1, Incoming::default);
        }
        // A repair may race a late original: the second is not sent again.
        let Some(seqs) = t.incoming[li].receive(now, rp.seq) else {
            self.stats.relay_duplicates += 1;
            return;
        };
        let time = MediaTime::new(rp.time, params.spec().clock_rate);
        let packet = match Packet::new(
            SeqNo::from(rp.seq),
            time,
            rp.marker,
            pt,
            params,
            rp.payload,
            now,
        ) {
            Ok(p) => p.with_audio_level(rp.audio_level, rp.voice_activity),
            Err(e) => {
                self.stats.relay_refused += 1;
                tracing::debug!(%track, error = %e, "relayed payload refused");
                return;
            }
        };
        self.stats.relay_packets_received += 1;
        self.stats.relay_bytes_received += packet.payload.len() as u64;
        let c = self.relay.counters.entry(link).or_default();
        c.packets_received += 1;
        c.bytes_received += packet.payload.len() as u64;
        if !seqs.is_empty() {
            self.stats.relay_nacks_sent += seqs.len() as u64;
            self.relay.counters.entry(link).or_default().nacks_sent += seqs.len() as u64;
            self.relay.outputs.push_back((
                link,
                RelayMessage::Control(Control::Nack {
                    track,
                    layer: li as u8,
                    seqs,
                }),
            ));
        }
        // The origin's source changed (a handover): subscribers re-base.
        if t.origin_epoch.is_some_and(|e| e != rp.epoch) {
            t.publication.epoch = t.publication.epoch.wrapping_add(1);
        }
        t.origin_epoch = Some(rp.epoch);
        let layer = simulcast.then_some(li);
        let participant = t.participant;
        let room = t.room.clone();
        let p = &mut t.publication;
        // A hole the link did not repair in time needs a keyframe.
        let lost = if p.kind == MediaKind::Video {
            match layer {
                Some(l) => p.layers[l].gaps.observe(rp.seq, now),
                None => p.gaps.observe(rp.seq, now),
            }
        } else {
            false
        };
        if let Some(l) = layer {
            p.layers[l].measure(now, packet.payload.len());
        }
        let epoch = p.epoch;
        let mut subscribers = std::mem::take(&mut p.subscribers);
        let layer = layer.map(|l| l as u8);
        let want = self.write_to_subscribers(&mut subscribers, epoch, layer, &packet);
        if let Some(t) = self.relay.tracks.get_mut(&track) {
            t.publication.subscribers = subscribers;
        }
        if lost {
            self.request_remote_keyframe(track, 0);
        }
        // Subscribers wait for a layer, or may have switched at this
        // keyframe: what they need changed.
        if want != 0 || packet.keyframe_start {
            self.update_demand(track);
        }
        if want != 0 {
            self.request_remote_keyframe(track, want);
        }
        if let Some(level) = packet.audio_level
            && let Some(r) = self.rooms.get_mut(&room)
        {
            r.speakers.observe(participant, level, now);
            let due = now + self.config.speaker_interval;
            if self.speaker_due.is_none_or(|t| t > due) {
                self.speaker_due = Some(due);
            }
        }
    }

    // ---- control ----

    fn relay_control(&mut self, link: LinkId, c: Control) {
        match c {
            Control::RoomLinked { .. } => {}
            Control::RoomUnlinked { room } => {
                self.unlink_room(link, &room, LeaveReason::ConnectionLost)
            }
            Control::ParticipantJoined { room, info } => self.remote_joined(link, room, info),
            Control::ParticipantUpdated { room, info } => {
                if let Some(p) = self.relay.participants.get_mut(&info.id)
                    && p.link == link
                    && p.room == room
                {
                    p.info = info;
                } else {
                    self.stats.relay_refused += 1;
                }
            }
            Control::ParticipantLeft {
                room,
                participant,
                reason,
            } => {
                if self
                    .relay
                    .participants
                    .get(&participant)
                    .is_some_and(|p| p.link == link && p.room == room)
                {
                    self.remote_left(&room, participant, reason);
                }
            }
            Control::TrackPublished {
                room,
                participant,
                track,
            } => self.remote_published(link, room, participant, track),
            Control::TrackUnpublished {
                room,
                participant,
                track,
            } => {
                if self
                    .relay
                    .tracks
                    .get(&track)
                    .is_some_and(|t| t.link == link && t.participant == participant)
                {
                    self.remote_unpublished(&room, participant, &[track]);
                }
            }
            Control::TrackMuted {
                room,
                participant,
                track,
                muted,
            } => {
                let Some(t) = self
                    .relay
                    .tracks
                    .get_mut(&track)
                    .filter(|t| t.link == link && t.participant == participant)
                else {
                    self.stats.relay_refused += 1;
                    return;
                };
                t.publication.set_muted(muted);
                let kind = t.publication.kind.into();
                let source = t.publication.source;
                self.signal_room(&room, None, |_| Signal::TrackMuted {
                    participant,
                    track,
                    kind,
                    source,
                    muted,
                });
            }
            Control::Demand { track, layers } => {
                let linked = self
                    .track_room(track)
                    .is_some_and(|r| self.relay.links(&r).contains(&link));
                if !linked {
                    self.stats.relay_refused += 1;
                    return;
                }
                self.set_link_demand(link, track, layers);
                // Layers a far subscriber needs must be sent by the publisher.
                self.update_layer_needs();
            }
            Control::LayerBitrates { track, bitrates } => {
                if let Some(t) = self.relay.tracks.get_mut(&track).filter(|t| t.link == link) {
                    for (l, b) in t.publication.layers.iter_mut().zip(bitrates) {
                        l.bitrate = b;
                    }
                }
            }
            Control::KeyframeRequest { track, layers } => {
                if self.tracks.contains_key(&track) {
                    self.origin_keyframe(track, layers);
                }
            }
            Control::Nack { track, layer, seqs } => self.answer_nack(link, track, layer, &seqs),
            Control::Speakers { room, levels } => self.remote_speakers(link, &room, &levels),
            Control::Data {
                room,
                from,
                topic,
                payload,
                destinations,
            } => self.remote_data(&room, from, topic, payload, &destinations),
            Control::Remove { room, identity } => {
                if let Err(e) = self.remove_local(&room, &identity, LeaveReason::Removed) {
                    tracing::debug!(%room, identity, error = %e, "relayed remove");
                }
            }
            Control::Replace { room, identity } => {
                let reason = LeaveReason::DuplicateIdentity;
                if let Err(e) = self.remove_local(&room, &identity, reason) {
                    tracing::debug!(%room, identity, error = %e, "relayed replace");
                }
            }
            Control::MuteTrack {
                room,
                identity,
                track,
                muted,
            } => {
                let now = self.now;
                if let Err(e) = self.handle_mute_track(now, &room, &identity, track, muted) {
                    tracing::debug!(%room, identity, error = %e, "relayed mute");
                }
            }
            Control::UpdatePermissions {
                room,
                identity,
                permissions,
            } => {
                let now = self.now;
                if let Err(e) = self.handle_update_permissions(now, &room, &identity, permissions) {
                    tracing::debug!(%room, identity, error = %e, "relayed permissions");
                }
            }
        }
    }

    fn remote_joined(&mut self, link: LinkId, room: RoomId, info: ParticipantInfo) {
        let id = info.id;
        let local = self.peers.values().any(|p| p.public_id() == id);
        let other_link = self
            .relay
            .participants
            .get(&id)
            .is_some_and(|p| p.link != link);
        if local || other_link {
            self.stats.relay_refused += 1;
            tracing::warn!(participant = %id, %link, "relayed participant collides; ignored");
            return;
        }
        let known = self.relay.participants.contains_key(&id);
        if !known && self.relay.participants_of_link(link) >= MAX_PARTICIPANTS_PER_LINK {
            self.stats.relay_refused += 1;
            return;
        }
        tracing::info!(%room, participant = %id, %link, "remote participant joined");
        self.relay.participants.insert(
            id,
            RemoteParticipant {
                link,
                room: room.clone(),
                info: info.clone(),
            },
        );
        if !known {
            let mut info = info;
            info.tracks.clear();
            self.signal_room(&room, None, |_| Signal::ParticipantJoined(info.clone()));
        }
    }

    fn remote_left(&mut self, room: &RoomId, participant: ParticipantId, reason: LeaveReason) {
        if self.relay.participants.remove(&participant).is_none() {
            return;
        }
        tracing::info!(%room, %participant, reason = reason.as_str(), "remote participant left");
        let tracks: Vec<TrackId> = self
            .relay
            .tracks
            .iter()
            .filter(|(_, t)| t.participant == participant)
            .map(|(id, _)| *id)
            .collect();
        self.remote_unpublished(room, participant, &tracks);
        if let Some(r) = self.rooms.get_mut(room) {
            r.speakers.remove(participant);
        }
        self.signal_room(room, None, |_| Signal::ParticipantLeft {
            participant,
            reason,
        });
    }

    fn remote_published(
        &mut self,
        link: LinkId,
        room: RoomId,
        participant: ParticipantId,
        track: RelayTrack,
    ) {
        let owner_ok = self
            .relay
            .participants
            .get(&participant)
            .is_some_and(|p| p.link == link && p.room == room);
        let id = track.id;
        let clash = self.tracks.contains_key(&id)
            || self.relay.tracks.get(&id).is_some_and(|t| t.link != link);
        if !owner_ok || clash {
            self.stats.relay_refused += 1;
            return;
        }
        if self.relay.tracks.contains_key(&id) {
            return; // announced already (a room linked twice)
        }
        if self.relay.tracks_of_link(link) >= MAX_TRACKS_PER_LINK {
            self.stats.relay_refused += 1;
            return;
        }
        let kind: MediaKind = track.kind.into();
        let mut publication = Publication::new(id, Mid::from("relay"), kind);
        let mut rids: Vec<str0m::media::Rid> =
            track.rids.iter().map(|r| r.as_str().into()).collect();
        rids.dedup();
        // Ordered as the origin orders them, so layer indices agree.
        rids.sort_by_key(|r| rid_rank(r));
        publication.layers = rids.into_iter().map(Layer::new).collect();
        publication.muted = track.muted;
        if let Some(source) = track.source.filter(|s| s.fits(track.kind)) {
            publication.source = source;
        }
        let info = publication.info();
        tracing::info!(%room, %participant, track = %id, ?kind, %link, "remote track published");
        self.relay.tracks.insert(
            id,
            RemoteTrack {
                link,
                room: room.clone(),
                participant,
                publication,
                codecs: track.codecs,
                incoming: Vec::new(),
                demand_sent: 0,
                origin_epoch: None,
                keyframe_mask: 0,
            },
        );
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        for m in members {
            let Some(other) = self.peers.get_mut(&m) else {
                continue;
            };
            if other.is_visible() || other.kind() == PeerKind::Whep {
                self.signals.push_back((
                    m,
                    Signal::TrackPublished {
                        participant,
                        track: info.clone(),
                    },
                ));
            }
            if !other.permissions().subscribe {
                continue;
            }
            match other.kind() {
                PeerKind::Session => {
                    other.subscriptions.push(Subscription::new(
                        Some(id),
                        Some(participant),
                        kind,
                        SubscriptionState::ToOpen,
                    ));
                    other.renegotiate();
                    self.mark_dirty(m);
                }
                PeerKind::Whep => self.bind_viewer(m, kind),
                PeerKind::Whip => {}
            }
        }
    }

    fn remote_unpublished(
        &mut self,
        room: &RoomId,
        participant: ParticipantId,
        tracks: &[TrackId],
    ) {
        for t in tracks {
            self.relay.tracks.remove(t);
        }
        if !tracks.is_empty() {
            self.unsubscribe_all(room, participant, true, tracks);
        }
    }

    fn remote_data(
        &mut self,
        room: &RoomId,
        from: Option<ParticipantId>,
        topic: Option<String>,
        payload: Vec<u8>,
        destinations: &[String],
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let topic: Option<Arc<str>> = topic.map(Arc::from);
        let payload: Arc<[u8]> = Arc::from(payload);
        for m in &r.connections {
            let Some(p) = self.peers.get(m) else {
                continue;
            };
            if p.kind() != PeerKind::Session
                || Some(p.public_id()) == from
                || !(destinations.is_empty() || destinations.iter().any(|d| d == p.identity()))
            {
                continue;
            }
            self.signals.push_back((
                *m,
                Signal::Data {
                    from,
                    topic: topic.clone(),
                    payload: payload.clone(),
                },
            ));
        }
    }

    /// A far core's subscribers need a keyframe of these layers (0: any used).
    fn origin_keyframe(&mut self, track: TrackId, layers: u32) {
        if layers == 0 {
            self.request_keyframe(track);
            return;
        }
        let Some(publisher) = self.tracks.get(&track).copied() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let now = self.now;
        let interval = self.config.keyframe_interval;
        let Some(p) = peer.published.iter_mut().find(|p| p.id == track) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        let mid = p.mid;
        if p.layers.is_empty() {
            self.request_keyframe(track);
            return;
        }
        let mut asked = false;
        for (i, l) in p.layers.iter_mut().enumerate() {
            if layers & (1 << i.min(31)) == 0 {
                continue;
            }
            if !l.keyframes.request(now, interval) {
                self.stats.keyframe_requests_throttled += 1;
                continue;
            }
            let stats = &mut self.stats;
            let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                if super::forward::ask_keyframe(rtc, mid, Some(l.rid)) {
                    stats.keyframe_requests += 1;
                }
            });
            asked = true;
        }
        if asked {
            self.mark_dirty(publisher);
        }
    }

    fn answer_nack(&mut self, link: LinkId, track: TrackId, layer: u8, seqs: &[u64]) {
        self.stats.relay_nacks_received += seqs.len() as u64;
        self.relay.count(link).nacks_received += seqs.len() as u64;
        let Some(h) = self
            .relay
            .history
            .get(&track)
            .and_then(|h| h.get(usize::from(layer)))
        else {
            return;
        };
        let found: Vec<RelayPacket> = seqs
            .iter()
            .take(MAX_NACKS_PER_MESSAGE)
            .filter_map(|s| h.get(*s).cloned())
            .collect();
        self.stats.relay_retransmits += found.len() as u64;
        self.relay.count(link).retransmits += found.len() as u64;
        for p in found {
            self.relay.outputs.push_back((link, RelayMessage::Media(p)));
        }
    }

    /// A local participant removed by a far core's server API.
    fn remove_local(
        &mut self,
        room: &RoomId,
        identity: &str,
        reason: LeaveReason,
    ) -> Result<(), crate::SignalError> {
        for c in self.connections_of(room, identity)? {
            self.remove_participant(c, reason);
        }
        Ok(())
    }
}
