//! What the server API asks of rooms and participants: open and close
//! rooms, list them, remove or mute a participant, change its permissions,
//! send data. Participants are named by identity, as integrations know them.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::MediaKind;

use super::Sfu;
use crate::error::SignalError;
use crate::id::{ConnectionId, ParticipantId, RoomId, TrackId};
use crate::relay::Control;
use crate::room::{Room, RoomOptions};
use crate::signal::{
    LeaveReason, ParticipantInfo, PeerKind, Permissions, RoomEvent, RoomInfo, Signal, TrackInfo,
};
use crate::track::{Subscription, SubscriptionState};

/// A data message for [`Sfu::handle_data`].
#[derive(Debug, Clone)]
pub struct DataMessage {
    /// The sender's topic, if any.
    pub topic: Option<Arc<str>>,
    /// The payload, shared between recipients.
    pub payload: Arc<[u8]>,
    /// Identities to deliver to; empty means everyone else in the room.
    pub destinations: Vec<String>,
}

impl Sfu {
    /// Opens a room ahead of its participants; a room that exists already is
    /// returned as it is.
    pub fn handle_create_room(
        &mut self,
        now: Instant,
        room: RoomId,
        options: RoomOptions,
    ) -> RoomInfo {
        self.advance(now);
        if let Some(r) = self.rooms.get(&room) {
            return self.describe(&room, r);
        }
        tracing::info!(%room, ?options, "room created");
        let r = Room::new(self.config.speaker_interval, self.now, options);
        if let Some(t) = r.closes_at() {
            self.rooms_due = Some(self.rooms_due.map_or(t, |d| d.min(t)));
        }
        let info = self.describe(&room, &r);
        self.rooms.insert(room.clone(), r);
        self.events.push_back(RoomEvent::RoomStarted { room });
        info
    }

    /// Closes a room: everyone in it leaves with [`LeaveReason::RoomDeleted`].
    /// False when there is no such room.
    pub fn handle_delete_room(&mut self, now: Instant, room: &RoomId) -> bool {
        self.advance(now);
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        // Closed when the last one leaves, whatever its timeout.
        r.options.empty_timeout = None;
        let members = r.connections.clone();
        tracing::info!(%room, participants = members.len(), "room deleted");
        if members.is_empty() {
            self.rooms.remove(room);
            self.events
                .push_back(RoomEvent::RoomFinished { room: room.clone() });
        }
        for p in members {
            self.remove_participant(p, LeaveReason::RoomDeleted);
        }
        true
    }

    /// Every open room, by name.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let mut rooms: Vec<(&RoomId, &Room)> = self.rooms.iter().collect();
        rooms.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        rooms
            .into_iter()
            .map(|(n, r)| self.describe(n, r))
            .collect()
    }

    /// One room as the API shows it.
    pub fn room_info(&self, room: &RoomId) -> Option<RoomInfo> {
        self.rooms.get(room).map(|r| self.describe(room, r))
    }

    fn describe(&self, room: &RoomId, r: &Room) -> RoomInfo {
        let visible = || {
            r.connections
                .iter()
                .filter_map(|p| self.peers.get(p))
                .filter(|p| p.is_visible() && p.takes_over().is_none())
        };
        // The room's participants on other cores count too.
        let remote = self.remote_participants(room);
        let remote_tracks = self.remote_tracks(room).len() as u32;
        RoomInfo {
            name: room.clone(),
            num_participants: visible().count() as u32 + remote.len() as u32,
            num_publishers: visible().filter(|p| !p.published.is_empty()).count() as u32
                + remote.iter().filter(|p| !p.tracks.is_empty()).count() as u32,
            num_tracks: r
                .connections
                .iter()
                .filter_map(|p| self.peers.get(p))
                .map(|p| p.published.len() as u32)
                .sum::<u32>()
                + remote_tracks,
            max_participants: r.options.max_participants,
            empty_timeout_secs: r.options.empty_timeout.map(|d| d.as_secs()),
            metadata: r.options.metadata.clone(),
            age_secs: self.now.saturating_duration_since(r.created).as_secs(),
        }
    }

    /// A participant of a room by identity.
    pub fn participant(&self, room: &RoomId, identity: &str) -> Option<ParticipantInfo> {
        let Ok(conns) = self.connections_of(room, identity) else {
            // One on another core holding the room.
            return self.remote_participant(room, identity);
        };
        // During a handover the track list is the union of both connections.
        let mut info = self.peers.get(conns.first()?)?.info();
        for c in conns.iter().skip(1) {
            if let Some(p) = self.peers.get(c) {
                info.tracks
                    .extend(p.published.iter().map(crate::track::Publication::info));
            }
        }
        Some(info)
    }

    /// The connections (one, two during a handover) of a visible participant.
    pub(super) fn connections_of(
        &self,
        room: &RoomId,
        identity: &str,
    ) -> Result<Vec<ConnectionId>, SignalError> {
        let r = self.rooms.get(room).ok_or(SignalError::UnknownRoom)?;
        let conns: Vec<ConnectionId> = r
            .connections
            .iter()
            .copied()
            .filter(|p| {
                self.peers
                    .get(p)
                    .is_some_and(|p| p.identity() == identity && p.is_visible())
            })
            .collect();
        if conns.is_empty() {
            return Err(SignalError::UnknownParticipant);
        }
        Ok(conns)
    }

    /// Removes a participant (every connection of it) with [`LeaveReason::Removed`].
    pub fn handle_remove_participant(
        &mut self,
        now: Instant,
        room: &RoomId,
        identity: &str,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let conns = match self.connections_of(room, identity) {
            Ok(c) => c,
            Err(e) => {
                // On another core: its core removes it.
                let c = Control::Remove {
                    room: room.clone(),
                    identity: identity.to_owned(),
                };
                return if self.relay_operation(room, identity, c) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        };
        for c in conns {
            self.remove_participant(c, LeaveReason::Removed);
        }
        Ok(())
    }

    /// Mutes or unmutes a participant's published track for everyone; the
    /// publisher is told too, so its client can show it and stop sending.
    pub fn handle_mute_track(
        &mut self,
        now: Instant,
        room: &RoomId,
        identity: &str,
        track: TrackId,
        muted: bool,
    ) -> Result<TrackInfo, SignalError> {
        self.advance(now);
        let conns = match self.connections_of(room, identity) {
            Ok(c) => c,
            Err(e) => return self.mute_remote(room, identity, track, muted).ok_or(e),
        };
        let owner = conns
            .iter()
            .copied()
            .find(|c| {
                self.peers
                    .get(c)
                    .is_some_and(|p| p.published.iter().any(|t| t.id == track))
            })
            .ok_or(SignalError::UnknownTrack)?;
        self.handle_mute(now, owner, Some(track), None, muted)?;
        let public = self
            .peers
            .get(&owner)
            .map_or(ParticipantId(owner.0), |p| p.public_id());
        let (kind, source) = self
            .peers
            .get(&owner)
            .and_then(|p| p.published.iter().find(|t| t.id == track))
            .map_or(
                (
                    crate::signal::TrackKind::Audio,
                    crate::signal::TrackSource::Microphone,
                ),
                |t| (t.kind.into(), t.source),
            );
        for c in conns {
            self.signals.push_back((
                c,
                Signal::TrackMuted {
                    participant: public,
                    track,
                    kind,
                    source,
                    muted,
                },
            ));
        }
        self.peers
            .get(&owner)
            .and_then(|p| p.published.iter().find(|t| t.id == track))
            .map(crate::track::Publication::info)
            .ok_or(SignalError::UnknownTrack)
    }

    /// Changes what a participant may do, at once: without `publish` its
    /// tracks are unpublished (and come back if it is granted again); without
    /// `subscribe` it stops receiving; with it again it receives everything.
    pub fn handle_update_permissions(
        &mut self,
        now: Instant,
        room: &RoomId,
        identity: &str,
        permissions: Permissions,
    ) -> Result<ParticipantInfo, SignalError> {
        self.advance(now);
        let conns = match self.connections_of(room, identity) {
            Ok(c) => c,
            Err(e) => {
                // On another core: its core applies them and tells the room.
                let c = Control::UpdatePermissions {
                    room: room.clone(),
                    identity: identity.to_owned(),
                    permissions,
                };
                if !self.relay_operation(room, identity, c) {
                    return Err(e);
                }
                let mut info = self
                    .remote_participant(room, identity)
                    .ok_or(SignalError::UnknownParticipant)?;
                info.permissions = permissions;
                return Ok(info);
            }
        };
        for c in &conns {
            self.apply_permissions(*c, permissions);
        }
        tracing::info!(%room, identity, ?permissions, "permissions changed");
        self.participant(room, identity)
            .ok_or(SignalError::UnknownParticipant)
    }

    fn apply_permissions(&mut self, pid: ConnectionId, new: Permissions) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let old = peer.set_permissions(new);
        let room = peer.room().clone();
        let public = peer.public_id();
        let visible = peer.is_visible();
        if old.publish && !new.publish {
            // Its m-lines stay; what arrives on them is dropped until granted again.
            let withdrawn: Vec<_> = peer
                .published
                .drain(..)
                .map(|p| {
                    let rids = p.layers.iter().map(|l| l.rid).collect();
                    (p.id, (p.mid, p.kind, rids))
                })
                .collect();
            let tracks: Vec<TrackId> = withdrawn.iter().map(|(id, _)| *id).collect();
            for (_, (mid, kind, rids)) in withdrawn {
                peer.withhold(mid, kind, rids);
            }
            self.drop_publications(&room, public, visible, &tracks);
        } else if !old.publish && new.publish {
            let withheld = peer.take_withheld();
            for (mid, kind, rids) in withheld {
                self.publish(pid, mid, kind, &rids);
            }
        }
        if old.subscribe && !new.subscribe {
            self.stop_receiving(pid);
        } else if !old.subscribe && new.subscribe {
            self.subscribe_to_room(pid);
        }
        if let Some(peer) = self.peers.get(&pid)
            && peer.kind() == PeerKind::Session
        {
            self.signals
                .push_back((pid, Signal::PermissionsChanged(new)));
        }
        self.relay_updated(pid);
        self.mark_dirty(pid);
    }

    /// Stops forwarding anything to `pid`; its m-lines are stopped at the
    /// next renegotiation.
    fn stop_receiving(&mut self, pid: ConnectionId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut stopped = Vec::new();
        for s in &mut peer.subscriptions {
            if let Some(src) = s.source.take() {
                s.publisher = None;
                if let Some(mid) = s.mid() {
                    stopped.push((src, mid));
                }
            }
        }
        peer.renegotiate();
        for (src, mid) in stopped {
            self.stop_feeding(src, pid, mid);
        }
    }

    /// Subscribes a session to every track in its room (but its own) it
    /// does not receive yet.
    pub(super) fn subscribe_to_room(&mut self, pid: ConnectionId) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        if peer.kind() != PeerKind::Session {
            return;
        }
        let public = peer.public_id();
        let room = peer.room().clone();
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        // Tracks relayed from other cores of the room too.
        let mut wanted: Vec<(TrackId, ParticipantId, MediaKind)> = self.remote_tracks(&room);
        for m in members {
            if let Some(o) = self.peers.get(&m)
                && o.public_id() != public
            {
                wanted.extend(o.published.iter().map(|p| (p.id, o.public_id(), p.kind)));
            }
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        for (track, publisher, kind) in wanted {
            if peer.subscriptions.iter().any(|s| s.source == Some(track)) {
                continue;
            }
            peer.subscriptions.push(Subscription::new(
                Some(track),
                Some(publisher),
                kind,
                SubscriptionState::ToOpen,
            ));
            peer.renegotiate();
        }
    }

    /// Sends a data message to the room's sessions (all but the sender, or
    /// the named identities); `from` is a participant's connection, `None`
    /// for the server API; other cores holding the room deliver it to
    /// theirs. Returns how many connections it went to here, plus one per
    /// other core it was relayed to.
    pub fn handle_data(
        &mut self,
        now: Instant,
        room: &RoomId,
        from: Option<ConnectionId>,
        message: DataMessage,
    ) -> Result<usize, SignalError> {
        self.advance(now);
        let sender = match from {
            Some(f) => {
                let p = self.peers.get(&f).ok_or(SignalError::UnknownParticipant)?;
                if !p.permissions().publish_data {
                    return Err(SignalError::NotPermitted(
                        "sending data needs canPublishData",
                    ));
                }
                Some(p.public_id())
            }
            None => None,
        };
        // Other cores of the room deliver it to theirs (counted once each).
        let mut n = self.relay_data(room, sender, &message);
        let r = self.rooms.get(room).ok_or(SignalError::UnknownRoom)?;
        for m in &r.connections {
            let Some(p) = self.peers.get(m) else {
                continue;
            };
            if p.kind() != PeerKind::Session
                || Some(p.public_id()) == sender
                || !(message.destinations.is_empty()
                    || message.destinations.iter().any(|d| d == p.identity()))
            {
                continue;
            }
            self.signals.push_back((
                *m,
                Signal::Data {
                    from: sender,
                    topic: message.topic.clone(),
                    payload: message.payload.clone(),
                },
            ));
            n += 1;
        }
        Ok(n)
    }

    /// Closes rooms that stayed empty past their timeout.
    pub(super) fn close_empty_rooms(&mut self, now: Instant) {
        let due: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.connections.is_empty() && r.closes_at().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for room in due {
            tracing::info!(%room, "empty room closed after its timeout");
            self.rooms.remove(&room);
            self.events.push_back(RoomEvent::RoomFinished { room });
        }
        self.rooms_due = self
            .rooms
            .values()
            .filter(|r| r.connections.is_empty())
            .filter_map(Room::closes_at)
            .min();
    }

    /// Server API mute of a track of a participant on another core: sent to
    /// its core, which applies it and tells the room; the track as it will be.
    fn mute_remote(
        &mut self,
        room: &RoomId,
        identity: &str,
        track: TrackId,
        muted: bool,
    ) -> Option<TrackInfo> {
        let info = self.remote_participant(room, identity)?;
        let mut t = info.tracks.into_iter().find(|t| t.id == track)?;
        let c = Control::MuteTrack {
            room: room.clone(),
            identity: identity.to_owned(),
            track,
            muted,
        };
        if !self.relay_operation(room, identity, c) {
            return None;
        }
        t.muted = muted;
        Some(t)
    }
}
