//! Driving one peer: polling its `Rtc` until it has nothing more, then the
//! cross-peer work that turned up (publish, forward, keyframes).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use str0m::bwe::BweKind;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::Transmit;
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, PacerReason, Reason, RtcError};

use super::{Sfu, requeue};
use crate::id::{ConnectionId, RoomId, TrackId};
use crate::isolation::RtcCall;
use crate::packet::Packet;
use crate::peer::Peer;
use crate::room::Room;
use crate::signal::{LeaveReason, PeerKind, RoomEvent, Signal};
use crate::stats::SfuStats;
use crate::track::{Subscription, SubscriptionState};

/// Cross-peer work found while driving one peer, done after its borrow ends.
// Boxing the packet would allocate per packet; the actions Vec is reused instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Action {
    Publish(Mid, MediaKind, Vec<Rid>),
    Bind(MediaKind),
    /// A packet of the m-line (and simulcast layer) to forward.
    Forward(Mid, Option<Rid>, Packet),
    Keyframe(TrackId),
    /// A message on one of its data channels, for its signaling.
    ChannelData(std::sync::Arc<str>, bool, Vec<u8>),
}

/// Due `Rtc` timeouts run inside one drive of a peer before it goes back to
/// the timer heap.
const INLINE_TIMEOUTS: u32 = 16;

/// Whether an outgoing datagram is RTP (not RTCP, STUN or DTLS): version 2
/// and a payload type outside RTCP's 64-95 (RFC 5761 section 4).
pub(super) fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [b0, b1, ..] => b0 >> 6 == 2 && !(64..96).contains(&(b1 & 0x7f)),
        _ => false,
    }
}

impl Sfu {
    /// Puts a peer's next deadline in the timer heap if it changed.
    pub(super) fn schedule(&mut self, pid: ConnectionId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // It panicked after its drive looked (during the cross-peer work):
        // driven again, it goes.
        if peer.rtc.is_poisoned() {
            requeue(&mut self.dirty, peer);
            return;
        }
        let d = peer.next_deadline(self.config.connect_timeout, self.config.keyframe_interval);
        if peer.reschedule(d) {
            self.timers.push(Reverse((d, pid)));
        }
    }

    /// Polls one peer until its `Rtc` has nothing more, then does the
    /// cross-peer work that turned up.
    pub(super) fn drive(&mut self, pid: ConnectionId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // Its `Rtc` panicked (wherever it was called from): it goes, as a
        // connection lost, without another call into it.
        if peer.rtc.is_poisoned() {
            self.remove_participant(pid, LeaveReason::ConnectionLost);
            return;
        }
        if let Some(offer) = peer.negotiate() {
            self.signals.push_back((pid, Signal::Offer(offer)));
        }
        // The peer stays borrowed for the whole poll (one lookup per drive);
        // what the poll writes besides it is borrowed field by field.
        let mut poll = PeerPoll {
            pid,
            now: self.now,
            speaker_interval: self.config.speaker_interval,
            stats: &mut self.stats,
            transmits: &mut self.transmits,
            actions: &mut self.actions,
            rooms: &mut self.rooms,
            speaker_due: &mut self.speaker_due,
            inline_timeouts: 0,
            write_only: false,
            connected_now: false,
        };
        poll.flush_written(peer);
        poll.run(peer);
        let connected_now = poll.connected_now;
        let (closing, poisoned) = verdict(peer);
        // A second, receive-only connection is no participant connecting.
        if connected_now && !peer.is_receiver() {
            tracing::info!(participant = %pid, room = %peer.room(), "media connected");
            self.events.push_back(RoomEvent::ParticipantConnected {
                room: peer.room().clone(),
                participant: peer.public_id(),
                join_time: self.now.saturating_duration_since(peer.joined_at()),
            });
        }
        // Nothing more comes of a peer that panicked.
        self.run_actions(pid, poisoned);
        if let Some(reason) = closing {
            self.remove_participant(pid, reason);
        } else {
            self.check_handover(pid);
            self.schedule(pid);
        }
    }

    /// Does the cross-peer work a drive of `pid` found (or drops it).
    fn run_actions(&mut self, pid: ConnectionId, discard: bool) {
        let mut actions = std::mem::take(&mut self.actions);
        if discard {
            actions.clear();
        }
        for a in actions.drain(..) {
            match a {
                Action::Publish(mid, kind, rids) => self.publish(pid, mid, kind, &rids),
                Action::Bind(kind) => self.bind_viewer(pid, kind),
                Action::Forward(mid, rid, p) => self.forward(pid, mid, rid, p),
                Action::Keyframe(track) => self.request_keyframe(track),
                Action::ChannelData(label, binary, data) => self.signals.push_back((
                    pid,
                    Signal::ChannelData {
                        label,
                        binary,
                        data,
                    },
                )),
            }
        }
        // Kept for the next drive: its capacity is reused.
        self.actions = actions;
    }
}

/// Whether a peer goes after its poll (why), and whether its `Rtc` panicked.
fn verdict(peer: &mut Peer) -> (Option<LeaveReason>, bool) {
    // Not alive includes poisoned.
    let alive = peer.rtc.call(RtcCall::Poll, |rtc| rtc.is_alive());
    let closing = peer.closing().or(if alive == Ok(true) {
        None
    } else {
        Some(LeaveReason::ConnectionLost)
    });
    (closing, alive.is_err())
}

/// One drive's poll of a peer's `Rtc`: what it writes to besides the peer
/// (disjoint borrows of the SFU's fields), and where it stands.
struct PeerPoll<'a> {
    pid: ConnectionId,
    now: Instant,
    speaker_interval: Duration,
    stats: &'a mut SfuStats,
    transmits: &'a mut VecDeque<Transmit>,
    actions: &'a mut Vec<Action>,
    rooms: &'a mut FxHashMap<RoomId, Room>,
    speaker_due: &'a mut Option<Instant>,
    /// `Rtc` timeouts run in this drive, at most [`INLINE_TIMEOUTS`].
    inline_timeouts: u32,
    /// Nothing of this peer was due but the media written to it.
    write_only: bool,
    /// ICE and DTLS completed during this poll.
    connected_now: bool,
}

impl PeerPoll<'_> {
    /// Media written to the peer goes out only after a timeout (str0m queues
    /// it for its pacer): run that now instead of learning it from a
    /// `poll_output`, one fewer per forwarded packet.
    fn flush_written(&mut self, peer: &mut Peer) {
        self.write_only = peer.only_writes_due(self.now);
        if peer.has_written() {
            self.inline_timeouts += 1;
            peer.run_timeout(self.now, self.stats);
        }
    }

    /// Polls the `Rtc` until it has nothing more (or fails).
    fn run(&mut self, peer: &mut Peer) {
        loop {
            self.stats.rtc_polls += 1;
            let Ok(output) = peer.rtc.call(RtcCall::Poll, |rtc| rtc.poll_output()) else {
                break; // poisoned: removed by the drive
            };
            let more = match output {
                Ok(str0m::Output::Timeout(t)) => self.on_timeout(peer, t),
                Ok(str0m::Output::Transmit(t)) => self.on_transmit(peer, t),
                Ok(str0m::Output::Event(e)) => {
                    self.on_event(peer, e);
                    true
                }
                // A payload str0m refused (its depacketizer, in frame mode;
                // in RTP mode payloads are checked in `on_rtp`): that media
                // is lost, not the connection. A video decoder then needs a
                // keyframe.
                Err(RtcError::Packet(mid, pt, e)) => {
                    self.stats.media_undecodable += 1;
                    tracing::debug!(participant = %self.pid, %mid, %pt, error = %e, "undecodable frame dropped");
                    if let Some(p) = peer.publication_by_mid(mid)
                        && p.kind == MediaKind::Video
                    {
                        self.actions.push(Action::Keyframe(p.id));
                    }
                    true
                }
                Err(e) => {
                    tracing::info!(participant = %self.pid, error = %e, "connection failed");
                    peer.close(LeaveReason::ConnectionLost);
                    false
                }
            };
            if !more {
                break;
            }
        }
    }

    /// The `Rtc`'s next deadline; false when the poll is over.
    fn on_timeout(&mut self, peer: &mut Peer, t: Instant) -> bool {
        // Already due: str0m packetizes written media on a timeout. Run it
        // here instead of a round trip through the timer heap and the
        // shell's loop; bounded, in case a deadline stays due without
        // progress.
        if self.inline_timeouts < INLINE_TIMEOUTS && peer.runs_inline(t, self.now) {
            self.inline_timeouts += 1;
            return peer.run_timeout(t.max(self.now), self.stats);
        }
        // str0m's pacer asks for a timeout right after each packet it
        // releases, only to take a fresh look at the queues.
        let reason = peer
            .rtc
            .call(RtcCall::Poll, |rtc| rtc.last_timeout_reason());
        let pacer_look = reason == Ok(Reason::Pacer(PacerReason::Immediate));
        peer.set_rtc_timeout(t, self.now, pacer_look);
        false
    }

    /// A datagram to send; false when the poll is over.
    fn on_transmit(&mut self, peer: &mut Peer, t: Transmit) -> bool {
        let rtp = is_rtp(&t.contents);
        self.transmits.push_back(t);
        // The last audio packet written to it went out on timeouts run only
        // for the writes: the poll may stop there.
        !peer.on_sent(rtp, self.write_only, self.now)
    }

    fn on_event(&mut self, peer: &mut Peer, e: Event) {
        let pid = self.pid;
        match e {
            Event::Connected => {
                peer.on_connected(self.now);
                self.connected_now = true;
            }
            Event::IceConnectionStateChange(state) => match state {
                // Not gone yet: a short outage or a new network may bring it
                // back (the client restarts ICE). The reconnect timeout, not
                // this, decides removal.
                IceConnectionState::Disconnected => {
                    tracing::info!(participant = %pid, "ice disconnected; waiting for the client to return");
                }
                other => tracing::debug!(participant = %pid, state = ?other, "ice state"),
            },
            Event::MediaAdded(m) => {
                let ours = peer.subscriptions.iter().any(|s| s.mid() == Some(m.mid));
                if ours {
                    return;
                }
                if m.direction.is_receiving() {
                    let rids = m
                        .simulcast
                        .map(|s| s.send.into_iter().chain(s.recv).map(|l| l.rid).collect())
                        .unwrap_or_default();
                    self.actions.push(Action::Publish(m.mid, m.kind, rids));
                } else if m.direction.is_sending() && peer.kind() == PeerKind::Whep {
                    peer.subscriptions.push(Subscription::new(
                        None,
                        None,
                        m.kind,
                        SubscriptionState::Open(m.mid),
                    ));
                    self.actions.push(Action::Bind(m.kind));
                }
            }
            Event::RtpPacket(p) => self.on_rtp(peer, p),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                tracing::debug!(participant = %pid, estimate = estimate.as_u64(), "bandwidth estimate");
                peer.on_estimate(estimate.as_u64());
            }
            Event::MediaEgressStats(st) => {
                // NACKs from this subscriber, answered from the send buffer.
                self.stats.nacks_received += peer.nack_delta(st.mid, Some(st.nacks), None).0;
            }
            Event::MediaIngressStats(st) => {
                // NACKs to this publisher for packets lost on its way in.
                self.stats.nacks_sent += peer.nack_delta(st.mid, None, Some(st.nacks)).1;
                // Its audio's jitter (Opus: a 48 kHz clock), for its
                // connection quality (crate::quality says why not video's).
                if peer
                    .publication_by_mid(st.mid)
                    .is_some_and(|p| p.kind == MediaKind::Audio)
                {
                    peer.quality.observe_jitter(st.jitter, 48_000);
                }
            }
            Event::PeerStats(st) => {
                peer.quality
                    .observe(st.ingress_loss_fraction, st.egress_loss_fraction, st.rtt);
            }
            Event::KeyframeRequest(r) => {
                if let Some(src) = peer.source_of(r.mid) {
                    self.actions.push(Action::Keyframe(src));
                }
            }
            Event::ChannelOpen(id, label) => peer.channel_opened(id, label),
            Event::ChannelClose(id) => peer.channel_closed(id),
            Event::ChannelData(d) => {
                if let Some(label) = peer.channel_label(d.id) {
                    self.actions
                        .push(Action::ChannelData(label, d.binary, d.data));
                }
            }
            _ => {}
        }
    }

    /// An RTP packet from the publisher: read once (its stream, codec,
    /// keyframe start), its audio level to the room's speaker detector, the
    /// packet to be forwarded after the poll.
    fn on_rtp(&mut self, peer: &mut Peer, p: RtpPacket) {
        self.stats.packets_received += 1;
        // By SSRC: browsers stop sending the mid and rid extensions once
        // the stream is known.
        let Some((mid, rid)) = peer.rx_stream(p.header.ssrc) else {
            return;
        };
        let pt = p.header.payload_type;
        let cached = peer
            .publication_by_mid(mid)
            .and_then(|x| x.params)
            .filter(|c| c.pt() == pt);
        let params = match cached {
            Some(c) => c,
            None => {
                let found = peer.rtc.call(RtcCall::Poll, |rtc| {
                    rtc.codec_config().find(|c| c.pt() == pt).copied()
                });
                let Ok(Some(c)) = found else {
                    self.stats.media_undecodable += 1;
                    return;
                };
                if let Some(x) = peer.publication_by_mid(mid) {
                    x.params = Some(c);
                }
                c
            }
        };
        let ext = &p.header.ext_vals;
        let (level, vad) = (ext.audio_level, ext.voice_activity);
        let packet = match Packet::new(
            p.seq_no,
            p.time,
            p.header.marker,
            pt,
            params,
            p.payload,
            p.timestamp,
        ) {
            Ok(x) => x.with_audio_level(level, vad),
            // A payload its codec does not allow: that packet is dropped,
            // not the connection. A video decoder then needs a keyframe.
            Err(e) => {
                self.stats.media_undecodable += 1;
                tracing::debug!(participant = %self.pid, %mid, %pt, error = %e, "undecodable packet dropped");
                if let Some(x) = peer.publication_by_mid(mid)
                    && x.kind == MediaKind::Video
                {
                    self.actions.push(Action::Keyframe(x.id));
                }
                return;
            }
        };
        if packet.marker || !packet.is_video() {
            self.stats.media_received += 1;
        }
        if let Some(level) = level
            && let Some(room) = self.rooms.get_mut(peer.room())
        {
            room.speakers.observe(peer.public_id(), level, self.now);
            let due = self.now + self.speaker_interval;
            if self.speaker_due.is_none_or(|t| t > due) {
                *self.speaker_due = Some(due);
            }
        }
        self.actions.push(Action::Forward(mid, rid, packet));
    }
}

#[cfg(test)]
mod tests {
    use super::is_rtp;

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        // Opus (PT 111) with and without the marker bit.
        assert!(is_rtp(&[0x80, 111, 0, 1]));
        assert!(is_rtp(&[0x80, 0x80 | 111, 0, 1]));
        // RTCP receiver report (201) and transport feedback (205).
        assert!(!is_rtp(&[0x81, 201, 0, 7]));
        assert!(!is_rtp(&[0x8f, 205, 0, 4]));
        // A STUN binding response and a DTLS record.
        assert!(!is_rtp(&[0x01, 0x01, 0, 0]));
        assert!(!is_rtp(&[22, 0xfe, 0xfd]));
        assert!(!is_rtp(&[0x80]));
    }
}
