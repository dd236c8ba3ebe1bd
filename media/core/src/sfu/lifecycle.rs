//! A participant's tracks and life in the room: publishing, muting, leaving
//! and removal, and rooms that empty.

use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::{Sfu, report_panic};
use crate::error::SignalError;
use crate::id::{ConnectionId, ParticipantId, RoomId, TrackId};
use crate::isolation::RtcCall;
use crate::signal::{LeaveReason, PeerKind, RoomEvent, Signal};
use crate::track::{Layer, Publication, Subscription, SubscriptionState, rid_rank};

impl Sfu {
    pub(super) fn publish(
        &mut self,
        pid: ConnectionId,
        mid: Mid,
        kind: MediaKind,
        rids: &[str0m::media::Rid],
    ) {
        let id = TrackId(self.next_track);
        self.next_track += self.config.id_space.1;
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if !peer.permissions().publish {
            tracing::info!(participant = %pid, %mid, "track withheld: no publish permission");
            peer.withhold(mid, kind, rids.to_vec());
            return;
        }
        if let Some(old) = peer.takes_over()
            && self
                .peers
                .get(&old)
                .is_some_and(|o| o.published.iter().any(|p| p.kind == kind))
        {
            // Replaces the old connection's track once media flows.
            if let Some(peer) = self.peers.get_mut(&pid) {
                peer.defer_track(mid, kind);
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let public_id = peer.public_id();
        let mut publication = Publication::new(id, mid, kind);
        if let Some(source) = peer.declared_source(mid, kind) {
            publication.source = source;
        }
        let mut rids = rids.to_vec();
        rids.dedup();
        rids.sort_by_key(|r| rid_rank(r));
        publication.layers = rids.into_iter().map(Layer::new).collect();
        let info = publication.info();
        peer.published.push(publication);
        let room = peer.room().clone();
        self.tracks.insert(id, pid);
        tracing::info!(participant = %pid, track = %id, ?kind, "track published");
        self.events.push_back(RoomEvent::TrackPublished {
            room: room.clone(),
            participant: public_id,
            track: id,
            kind: kind.into(),
        });
        self.relay_published(pid, id);
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        for m in members {
            let Some(other) = self.peers.get_mut(&m) else {
                continue;
            };
            if other.public_id() == public_id {
                continue;
            }
            if other.is_visible() || other.kind() == PeerKind::Whep {
                self.signals.push_back((
                    m,
                    Signal::TrackPublished {
                        participant: public_id,
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
                        Some(public_id),
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

    /// A publisher muted or unmuted one of its tracks (by id, or the first of `kind`).
    pub fn handle_mute(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        track: Option<TrackId>,
        kind: Option<MediaKind>,
        muted: bool,
    ) -> Result<TrackId, SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        let p = peer
            .published
            .iter_mut()
            .find(|p| Some(p.id) == track || (track.is_none() && Some(p.kind) == kind))
            .ok_or(SignalError::UnknownTrack)?;
        let changed = p.set_muted(muted);
        let id = p.id;
        let video = p.kind == MediaKind::Video;
        let kind = p.kind.into();
        let source = p.source;
        let room = peer.room().clone();
        let public_id = peer.public_id();
        self.signal_room(&room, Some(connection), |_| Signal::TrackMuted {
            participant: public_id,
            track: id,
            kind,
            source,
            muted,
        });
        if changed {
            self.relay_muted(&room, public_id, id, muted);
            self.events.push_back(RoomEvent::TrackMuted {
                room,
                participant: public_id,
                track: id,
                muted,
            });
            // Subscribers dropped its frames while muted: start a picture.
            if !muted && video {
                self.request_keyframe(id);
            }
        }
        Ok(id)
    }

    /// A participant leaves (client request, WebSocket closed, DELETE).
    pub fn handle_leave(&mut self, now: Instant, connection: ConnectionId, reason: LeaveReason) {
        self.advance(now);
        self.remove_participant(connection, reason);
    }

    /// Closes every peer (server shutdown); drain [`Sfu::poll_output`] afterwards
    /// to send their goodbyes.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.advance(now);
        let all: Vec<ConnectionId> = self.peers.keys().copied().collect();
        for p in all {
            self.remove_participant(p, LeaveReason::ServerShutdown);
        }
    }

    /// Removes connected clients that have sent nothing for the reconnect
    /// timeout. Shorter outages (a network change, a blip) are survived: the
    /// client comes back as the same participant and nobody sees a leave.
    pub(super) fn sweep_silent(&mut self, now: Instant) {
        let timeout = self.config.reconnect_timeout;
        let mut gone = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.silent_past(now, timeout) {
                tracing::info!(participant = %peer.id(), "silent past the reconnect timeout; removing");
                peer.close(LeaveReason::ConnectionLost);
                gone.push(peer.id());
            }
        }
        for p in gone {
            self.mark_dirty(p);
        }
    }

    pub(super) fn remove_participant(&mut self, pid: ConnectionId, reason: LeaveReason) {
        let Some(mut peer) = self.peers.remove(&pid) else {
            return;
        };
        let _span = tracing::info_span!("leave", room = %peer.room(), participant = %pid).entered();
        tracing::info!(reason = reason.as_str(), "participant left");
        self.router.remove(peer.ufrags(), peer.addrs(), pid);
        self.dirty.retain(|p| *p != pid);
        self.written.retain(|p| *p != pid);
        // Send DTLS close_notify and RTCP BYE so the client learns at once;
        // not if its `Rtc` panicked (it is dropped, never called again). A
        // client that gets no goodbye learns from its signaling's `left`.
        let transmits = &mut self.transmits;
        let _ = peer.rtc.call(RtcCall::Close, |rtc| {
            if rtc.close().is_ok() {
                for _ in 0..32 {
                    match rtc.poll_output() {
                        Ok(str0m::Output::Transmit(t)) => transmits.push_back(t),
                        Ok(str0m::Output::Event(_)) => {}
                        Ok(str0m::Output::Timeout(_)) | Err(_) => break,
                    }
                }
            }
        });
        report_panic(&mut self.stats, &peer);
        let room = peer.room().clone();
        if let Some(r) = self.rooms.get_mut(&room) {
            r.remove(pid);
        }
        let public = peer.public_id();
        // Another connection of the same participant (a handover) stays: the
        // others see no leave.
        let successor = self.rooms.get(&room).and_then(|r| {
            r.connections.iter().copied().find(|m| {
                // Not a second, receive-only connection: it goes with it.
                self.peers
                    .get(m)
                    .is_some_and(|p| p.public_id() == public && p.is_visible())
            })
        });
        if successor.is_none()
            && let Some(r) = self.rooms.get_mut(&room)
        {
            r.speakers.remove(public);
        }
        // What it received: stop feeding it.
        for s in &peer.subscriptions {
            if let (Some(src), Some(mid)) = (s.source, s.mid()) {
                self.stop_feeding(src, pid, mid);
            }
        }
        // What it published: everyone's subscriptions lose their source.
        let tracks: Vec<TrackId> = peer.published.iter().map(|p| p.id).collect();
        self.drop_publications(&room, public, peer.is_visible(), &tracks);
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        if peer.is_visible() && successor.is_none() {
            for m in &members {
                if self.peers.get(m).is_some_and(|o| o.public_id() != public) {
                    self.signals.push_back((
                        *m,
                        Signal::ParticipantLeft {
                            participant: public,
                            reason,
                        },
                    ));
                }
            }
        }
        self.signals.push_back((pid, Signal::Left { reason }));
        if peer.is_visible() && successor.is_none() {
            self.relay_left(&room, public, reason);
            self.events.push_back(RoomEvent::ParticipantLeft {
                room: room.clone(),
                participant: public,
                reason,
            });
        }
        // The old connection of a handover died first: the new one's tracks
        // become tracks of their own.
        if let Some(next) = successor
            && self.peers.get(&next).and_then(|p| p.takes_over()) == Some(pid)
        {
            let pending = self
                .peers
                .get_mut(&next)
                .map(|p| p.end_handover())
                .unwrap_or_default();
            for (mid, kind) in pending {
                self.publish(next, mid, kind, &[]);
            }
        }
        if members.is_empty() {
            self.room_emptied(room);
        }
    }

    /// The client stopped sending on these m-lines of its own (its offer
    /// stopped them or made them receive-only): their tracks are
    /// unpublished, as when it leaves. M-lines that carry no published
    /// track (the server's own, a withheld one) are left alone, but a
    /// withheld one is forgotten so a later grant does not publish it.
    pub(super) fn unpublish_mids(&mut self, pid: ConnectionId, mids: &[Mid]) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if mids.is_empty() {
            return;
        }
        peer.forget_withheld(mids);
        let mut tracks = Vec::new();
        peer.published.retain(|p| {
            let keep = !mids.contains(&p.mid);
            if !keep {
                tracks.push(p.id);
            }
            keep
        });
        if tracks.is_empty() {
            return;
        }
        let room = peer.room().clone();
        let public = peer.public_id();
        let visible = peer.is_visible();
        tracing::info!(participant = %pid, ?tracks, "tracks unpublished: the client stopped sending them");
        self.drop_publications(&room, public, visible, &tracks);
    }

    /// Tracks of `public` are gone (its connection left, or it may no longer
    /// publish): subscribers stop receiving them and are told.
    pub(super) fn drop_publications(
        &mut self,
        room: &RoomId,
        public: ParticipantId,
        visible: bool,
        tracks: &[TrackId],
    ) {
        if tracks.is_empty() {
            return;
        }
        for t in tracks {
            self.tracks.remove(t);
            self.events.push_back(RoomEvent::TrackUnpublished {
                room: room.clone(),
                participant: public,
                track: *t,
            });
        }
        self.relay_unpublished(room, public, tracks);
        self.unsubscribe_all(room, public, visible, tracks);
    }

    /// Tracks of `public` (local or remote) are gone: the room's
    /// subscribers stop receiving them and are told (if `visible`).
    pub(super) fn unsubscribe_all(
        &mut self,
        room: &RoomId,
        public: ParticipantId,
        visible: bool,
        tracks: &[TrackId],
    ) {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        for m in &members {
            let Some(other) = self.peers.get_mut(m) else {
                continue;
            };
            if other.public_id() == public {
                continue;
            }
            let mut rebind = Vec::new();
            for s in &mut other.subscriptions {
                if let Some(src) = s.source
                    && tracks.contains(&src)
                {
                    s.source = None;
                    s.publisher = None;
                    rebind.push(s.kind);
                }
            }
            if !rebind.is_empty() {
                other.renegotiate();
            }
            if visible {
                for t in tracks {
                    self.signals.push_back((
                        *m,
                        Signal::TrackUnpublished {
                            participant: public,
                            track: *t,
                        },
                    ));
                }
            }
            let whep = other.kind() == PeerKind::Whep;
            self.mark_dirty(*m);
            if whep {
                for kind in rebind {
                    self.bind_viewer(*m, kind);
                }
            }
        }
    }

    /// The last participant left: the room closes now, or after its empty timeout.
    pub(super) fn room_emptied(&mut self, room: RoomId) {
        let now = self.now;
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.options.empty_timeout.is_some() {
            r.empty_since = Some(now);
            if let Some(t) = r.closes_at() {
                self.rooms_due = Some(self.rooms_due.map_or(t, |d| d.min(t)));
            }
            return;
        }
        self.rooms.remove(&room);
        self.events.push_back(RoomEvent::RoomFinished { room });
    }

    pub(super) fn signal_room(
        &mut self,
        room: &RoomId,
        except: Option<ConnectionId>,
        mut f: impl FnMut(ConnectionId) -> Signal,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for p in &r.connections {
            if Some(*p) != except {
                self.signals.push_back((*p, f(*p)));
            }
        }
    }
}
