//! Joining a room, and a handover: one participant moving to a new connection.

use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::Mid;

use super::forward::ask_keyframe;
use super::negotiation::check_tracks;
use super::{Sfu, report_panic, requeue};
use crate::error::{JoinError, SignalError};
use crate::id::{ConnectionId, RoomId};
use crate::isolation::RtcCall;
use crate::peer::{Peer, StreamIds};
use crate::room::{Room, RoomOptions};
use crate::signal::{LeaveReason, ParticipantInfo, PeerKind, Permissions, RoomEvent, Signal};
use str0m::channel::ChannelConfig;

/// A request to put a participant in a room.
#[derive(Debug)]
pub struct JoinRequest {
    room: RoomId,
    identity: String,
    name: Option<String>,
    kind: PeerKind,
    permissions: Permissions,
    offer: Option<SdpOffer>,
    account: Option<(String, String)>,
    receives_for: Option<ConnectionId>,
    stream_ids: Option<StreamIds>,
    channels: Vec<ChannelConfig>,
}

impl JoinRequest {
    /// A join of `identity` to `room` over `kind`, with all permissions and no offer.
    pub fn new(room: RoomId, identity: impl Into<String>, kind: PeerKind) -> Self {
        JoinRequest {
            room,
            identity: identity.into(),
            name: None,
            kind,
            permissions: Permissions::default(),
            offer: None,
            account: None,
            receives_for: None,
            stream_ids: None,
            channels: Vec::new(),
        }
    }

    /// A second, receive-only connection of the participant joined on
    /// `connection` (a client with a connection for publishing and another
    /// for receiving, as LiveKit's SDKs have): it receives every track in
    /// the room but that participant's own, is not listed to others nor
    /// counted against the room's limit, and the server offers first on
    /// it, opening `channels` in that offer (so there is one to make in an
    /// empty room too). Needs a [`PeerKind::Session`] join.
    pub fn receiving_for(mut self, connection: ConnectionId, channels: Vec<ChannelConfig>) -> Self {
        self.receives_for = Some(connection);
        self.channels = channels;
        self
    }

    /// How the msid of the m-lines the server offers names the publisher
    /// (stream id) and the track (track id); vela's ids (`PA3`, `TR5`)
    /// when not set.
    pub fn with_stream_ids(mut self, f: StreamIds) -> Self {
        self.stream_ids = Some(f);
        self
    }

    /// The account and device the participant joined as; others see them
    /// in [`ParticipantInfo`].
    pub fn with_account(mut self, account: impl Into<String>, device: impl Into<String>) -> Self {
        self.account = Some((account.into(), device.into()));
        self
    }

    /// The display name (the identity when not set).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What the participant may do.
    pub fn with_permissions(mut self, p: Permissions) -> Self {
        self.permissions = p;
        self
    }

    /// The room to join.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The client's SDP offer (required for WHIP and WHEP).
    pub fn with_offer(mut self, offer: SdpOffer) -> Self {
        self.offer = Some(offer);
        self
    }
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// The key of this connection for later calls ([`Sfu::handle_offer`] and
    /// the like) and for its signals. Its number is the participant's, except
    /// after a handover (see [`ConnectionId`]).
    pub connection: ConnectionId,
    /// The new participant, as others see it.
    pub participant: ParticipantInfo,
    /// The visible participants already in the room.
    pub others: Vec<ParticipantInfo>,
    /// The answer to the join's offer, if it had one.
    pub answer: Option<SdpAnswer>,
    /// The connection of an older session of the same identity that this join
    /// closed.
    pub replaced: Option<ConnectionId>,
}

/// How long after a handover's new connection is up the old one may keep
/// tracks the new one has not replaced.
const HANDOVER_GRACE: Duration = Duration::from_secs(3);

impl Sfu {
    /// Puts a participant in a room.
    pub fn handle_join(&mut self, now: Instant, req: JoinRequest) -> Result<Joined, JoinError> {
        self.advance(now);
        self.admit(req, None)
    }

    /// Moves a participant's call to a new connection (another device of the
    /// same identity) without the others seeing a leave and a join.
    ///
    /// The new connection receives everyone else's tracks. Each track it
    /// publishes replaces the old connection's track of the same kind at its
    /// first decodable frame (audio at once, video at a keyframe), keeping the
    /// track id and the others' m-lines; then the old connection is closed
    /// with [`LeaveReason::HandedOver`].
    pub fn handle_handover(
        &mut self,
        now: Instant,
        from: ConnectionId,
        req: JoinRequest,
    ) -> Result<Joined, JoinError> {
        self.advance(now);
        let Some(old) = self.peers.get(&from) else {
            return Err(JoinError::NotPermitted("no such participant to take over"));
        };
        // The same person: the same account (from another device), or for
        // participants without accounts, the same identity.
        let same = match (old.account(), &req.account) {
            (Some((a, _)), Some((b, _))) => a == b,
            (None, None) => old.identity() == req.identity,
            _ => false,
        };
        if !same || *old.room() != req.room || !old.is_visible() {
            return Err(JoinError::NotPermitted(
                "a handover needs the same account (or identity) in the same room",
            ));
        }
        if req.kind != PeerKind::Session {
            return Err(JoinError::NotPermitted(
                "a handover needs a signaling session",
            ));
        }
        self.admit(req, Some(from))
    }

    pub(super) fn admit(
        &mut self,
        req: JoinRequest,
        takes_over: Option<ConnectionId>,
    ) -> Result<Joined, JoinError> {
        let JoinRequest {
            room,
            identity,
            name,
            kind,
            permissions,
            offer,
            account,
            receives_for,
            stream_ids,
            channels,
        } = req;
        // A second connection of a participant here: no replacing, no
        // counting (it is that participant already).
        let twin = match receives_for {
            Some(of) => {
                let ok = kind == PeerKind::Session
                    && self
                        .peers
                        .get(&of)
                        .is_some_and(|p| p.is_visible() && *p.room() == room);
                if !ok {
                    return Err(JoinError::NotPermitted(
                        "a receiving connection needs a session of a participant in the room",
                    ));
                }
                Some(of)
            }
            None => None,
        };
        match kind {
            PeerKind::Whip if !permissions.publish => {
                return Err(JoinError::NotPermitted("publishing needs canPublish"));
            }
            PeerKind::Whep if !permissions.subscribe => {
                return Err(JoinError::NotPermitted("viewing needs canSubscribe"));
            }
            PeerKind::Whip | PeerKind::Whep if offer.is_none() => {
                return Err(JoinError::OfferRequired);
            }
            _ => {}
        }
        // The same identity joining again replaces its older session (not for
        // viewers, nor during a handover).
        let replaced = if kind == PeerKind::Whep || takes_over.is_some() || twin.is_some() {
            None
        } else {
            self.rooms.get(&room).and_then(|r| {
                r.connections.iter().copied().find(|p| {
                    self.peers
                        .get(p)
                        .is_some_and(|p| p.identity() == identity && p.is_visible())
                })
            })
        };
        // An account's device is replaced by that device only: a room token's
        // identity is whatever its minter chose, and may spell an account's.
        if let Some(old) = replaced.and_then(|p| self.peers.get(&p))
            && old.account().is_some()
            && old.account() != account.as_ref()
        {
            return Err(JoinError::NotPermitted(
                "the identity belongs to a signed-in device in this room",
            ));
        }
        // The same identity on another core of the room is replaced too, by
        // the same rule.
        let remote_replaced = if kind == PeerKind::Whep
            || takes_over.is_some()
            || twin.is_some()
            || replaced.is_some()
        {
            None
        } else {
            self.remote_by_identity(&room, &identity)
        };
        if let Some((_, old_account)) = &remote_replaced
            && old_account.is_some()
            && old_account.as_ref() != account.as_ref()
        {
            return Err(JoinError::NotPermitted(
                "the identity belongs to a signed-in device in this room",
            ));
        }
        let limit = self
            .rooms
            .get(&room)
            .map(|r| r.options.max_participants)
            .filter(|n| *n > 0)
            .unwrap_or(self.config.max_participants_per_room) as usize;
        // A room spread over cores counts its participants on the others too.
        let present =
            self.rooms.get(&room).map_or(0, |r| r.connections.len()) + self.remote_count(&room);
        let leaving = usize::from(replaced.is_some() || remote_replaced.is_some());
        if limit > 0 && takes_over.is_none() && twin.is_none() && present - leaving >= limit {
            return Err(JoinError::RoomFull(room.to_string()));
        }

        let id = ConnectionId(self.next_participant);
        self.next_participant += self.config.id_space.1;
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| identity.clone());
        let mut peer = Peer::new(
            self.now,
            id,
            room.clone(),
            identity,
            name,
            kind,
            permissions,
            &self.config.candidates,
            &self.config.tcp_candidates,
            &self.rtc_config,
        );
        peer.sign_in(account);
        let answer = match offer {
            Some(o) => Some(
                check_tracks(&o, self.config.max_tracks_per_participant)
                    .and_then(|()| peer.accept_offer(o))
                    .map_err(|e| match e {
                        SignalError::ConnectionFailed => JoinError::ConnectionFailed,
                        e => JoinError::Offer(e.to_string()),
                    }),
            ),
            None => None,
        };
        // Its `Rtc` panicked (building it, or on the offer): it never joins.
        if peer.rtc.is_poisoned() {
            report_panic(&mut self.stats, &peer);
            return Err(JoinError::ConnectionFailed);
        }
        let answer = answer.transpose()?;
        if let Some(old) = takes_over.and_then(|o| self.peers.get(&o)) {
            peer.take_over(old);
        }
        if let Some(of) = twin.and_then(|o| self.peers.get(&o)) {
            peer.receive_for(of, channels);
        }
        peer.set_stream_ids(stream_ids);
        let public_id = peer.public_id();
        let _span = tracing::info_span!("join", room = %room, participant = %id).entered();
        if let Some(old) = replaced {
            self.remove_participant(old, LeaveReason::DuplicateIdentity);
        }
        if let Some((old, _)) = remote_replaced {
            self.replace_remote(&room, old);
        }

        let now = self.now;
        let room_entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            self.events
                .push_back(RoomEvent::RoomStarted { room: room.clone() });
            Room::new(self.config.speaker_interval, now, RoomOptions::default())
        });
        room_entry.empty_since = None;
        let existing: Vec<ConnectionId> = room_entry.connections.clone();
        room_entry.connections.push(id);

        let info = peer.info();
        for u in peer.ufrags() {
            self.router.add_ufrag(u.clone(), id);
        }
        let visible = peer.is_visible();
        tracing::info!(identity = %info.identity, ?kind, "participant joined");
        self.peers.insert(id, Box::new(peer));
        // A session subscribes to every track already in the room (but its own).
        if permissions.subscribe {
            self.subscribe_to_room(id);
        }
        self.mark_dirty(id);

        let mut others: Vec<ParticipantInfo> = existing
            .iter()
            .filter_map(|p| self.peers.get(p))
            .filter(|p| p.is_visible() && p.public_id() != public_id)
            .map(|p| p.info())
            .collect();
        // And those on other cores holding the room.
        others.extend(self.remote_participants(&room));
        if let Some(from) = takes_over {
            tracing::info!(%from, "handover started");
        } else if visible {
            for other in &existing {
                self.signals
                    .push_back((*other, Signal::ParticipantJoined(info.clone())));
            }
            self.relay_joined(&room, &info);
            self.events.push_back(RoomEvent::ParticipantJoined {
                room,
                participant: info.clone(),
            });
        }
        Ok(Joined {
            connection: id,
            participant: info,
            others,
            answer,
            replaced,
        })
    }

    /// Moves the old connection's track of this frame's kind to the new
    /// connection, if the frame can start a picture (audio always, video at a
    /// keyframe). True when the frame is to be forwarded.
    pub(super) fn take_over_track(&mut self, new: ConnectionId, mid: Mid, keyframe: bool) -> bool {
        let Some(peer) = self.peers.get_mut(&new) else {
            return false;
        };
        if !peer.is_deferred(mid) {
            return false;
        }
        let Some(kind) = peer.ready_to_take_over(mid, keyframe) else {
            // Keep the old picture until the new device sends a keyframe.
            let now = self.now;
            let interval = self.config.keyframe_interval;
            if peer.handover_keyframe_due(now, interval) {
                let stats = &mut self.stats;
                let asked = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                    if ask_keyframe(rtc, mid, None) {
                        stats.keyframe_requests += 1;
                    }
                });
                if asked.is_err() {
                    requeue(&mut self.dirty, peer);
                }
            }
            return false;
        };
        let Some(old) = peer.takes_over() else {
            return false;
        };
        let Some(o) = self.peers.get_mut(&old) else {
            return false;
        };
        let Some(i) = o.published.iter().position(|p| p.kind == kind) else {
            return false;
        };
        let mut publication = o.published.remove(i);
        publication.mid = mid;
        publication.keyframes = Default::default();
        // Subscribers re-base their timestamps on the new source.
        publication.epoch = publication.epoch.wrapping_add(1);
        // The new device numbers its packets and payload types its own way.
        publication.params = None;
        publication.gaps = Default::default();
        for l in &mut publication.layers {
            l.gaps = Default::default();
        }
        let track = publication.id;
        self.tracks.insert(track, new);
        if let Some(peer) = self.peers.get_mut(&new) {
            peer.published.push(publication);
        }
        tracing::info!(%track, from = %old, to = %new, "track handed over");
        self.check_handover(new);
        true
    }

    /// Ends a handover once the new connection carries everything it will:
    /// all the old connection's tracks, or a grace period after connecting.
    pub(super) fn check_handover(&mut self, new: ConnectionId) {
        let Some(peer) = self.peers.get(&new) else {
            return;
        };
        let Some(old) = peer.takes_over() else {
            return;
        };
        let Some(connected_at) = peer.connected_at() else {
            return;
        };
        let old_done = self.peers.get(&old).is_none_or(|o| o.published.is_empty());
        let grace_over = self.now >= connected_at + HANDOVER_GRACE;
        if !old_done && !grace_over {
            return;
        }
        let public = peer.public_id();
        let room = peer.room().clone();
        // Tracks of kinds the old connection did not have, or that never
        // produced a frame in time, become tracks of their own (below, once
        // the old connection is gone).
        let pending = self
            .peers
            .get_mut(&new)
            .map(|p| p.end_handover())
            .unwrap_or_default();
        tracing::info!(from = %old, to = %new, "handover complete");
        self.events.push_back(RoomEvent::ParticipantHandedOver {
            room,
            participant: public,
            to: new,
        });
        self.remove_participant(old, LeaveReason::HandedOver);
        for (mid, kind) in pending {
            self.publish(new, mid, kind, &[]);
        }
    }
}
