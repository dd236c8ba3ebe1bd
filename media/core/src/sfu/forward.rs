//! Forwarding media: subscribers of a track, keyframe requests, and the
//! per-packet fan-out.

use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite, Vp8PatchError};
use str0m::{Rtc, RtcError};

use super::Sfu;
use crate::id::{ConnectionId, TrackId};
use crate::isolation::{Poisoned, RtcCall};
use crate::pace::PacerModel;
use crate::packet::Packet;
use crate::peer::Peer;
use crate::track::{Mapped, Publication, Subscriber};

/// The layers (rids) to ask a keyframe of: for a simulcast track the layers
/// its subscribers receive or switch to, every layer if none is in use yet
/// (str0m needs the rid: a request without one reaches no simulcast layer);
/// `[None]` for a single-layer track.
pub(super) fn keyframe_rids(p: &Publication) -> Vec<Option<Rid>> {
    if p.layers.is_empty() {
        return vec![None];
    }
    let used: Vec<Option<Rid>> = p
        .layers
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            p.subscribers.iter().any(|s| {
                s.current.map(usize::from) == Some(*i) || s.target.map(usize::from) == Some(*i)
            })
        })
        .map(|(_, l)| Some(l.rid))
        .collect();
    if used.is_empty() {
        p.layers.iter().map(|l| Some(l.rid)).collect()
    } else {
        used
    }
}

/// Asks the publisher of m-line `mid` (its layer `rid`) for a keyframe (a
/// PLI); false when no such stream has arrived yet.
pub(super) fn ask_keyframe(rtc: &mut Rtc, mid: Mid, rid: Option<Rid>) -> bool {
    match rtc.direct_api().stream_rx_by_mid(mid, rid) {
        Some(rx) => {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            true
        }
        None => false,
    }
}

/// Writes source packet `p`, numbered for the subscriber as `m`, to the
/// subscriber's m-line `s.mid` with payload type `pt`, at `now`; `pace`
/// models the subscriber's pacer at send estimate `estimate`.
fn write_packet(
    rtc: &mut Rtc,
    s: &mut Subscriber,
    pt: str0m::media::Pt,
    m: Mapped,
    p: &Packet,
    (pace, now, estimate): (&mut PacerModel, Instant, Option<u64>),
) -> Result<(), RtcError> {
    let video = p.is_video();
    let ext = ExtensionValues {
        audio_level: p.audio_level,
        voice_activity: p.voice_activity,
        ..Default::default()
    };
    let mut rtp = RtpWrite::new(
        pt,
        m.seq.into(),
        m.time.numer() as u32,
        p.arrival,
        p.payload.clone(),
    )
    .marker(p.marker)
    .ext_vals(ext)
    // Video is repaired from str0m's send buffer when the subscriber NACKs.
    .nackable(video);
    if let (Some(d), Some(id)) = (p.vp8, m.picture_id) {
        let patch = |id: u16| {
            let b = d.patch().picture_id(id);
            match (m.tl0_pic_idx, d.tl0_pic_idx()) {
                (Some(t), Some(_)) => b.tl0_pic_idx(t),
                _ => b,
            }
            .build()
        };
        // A 7-bit picture id takes the low bits of the 15-bit numbering.
        let built = match patch(id) {
            Err(Vp8PatchError::PictureIdTooLarge) => patch(id & 0x7f),
            other => other,
        };
        if let Ok(v) = built {
            // Applied as the packet is serialized: the payload is not copied.
            rtp = rtp.vp8_patch(v);
        }
    }
    // A keyframe skips str0m's leaky bucket (1.1x the send estimate with
    // 40 ms of burst), which held it 100-400 ms (issue 22): the publisher's
    // pacer spaced it already. So do the frames behind it while the debt it
    // left in the pacer would hold them (the pacer counts unpaced bytes
    // too). Other video stays paced: with all video unpaced the send
    // estimate fell and the layers with it (BENCHMARKS.md).
    let held = pace.would_hold(now, estimate);
    pace.sent(p.payload.len(), estimate);
    if video && p.keyframe_start {
        s.in_keyframe = true;
    }
    let unpaced = video && (s.in_keyframe || held);
    if video && p.marker {
        s.in_keyframe = false;
    }
    let mid = s.mid;
    let mut api = rtc.direct_api();
    // By SSRC, one hash lookup, while the cached stream still serves the
    // m-line; str0m finds one by m-line only by walking all send streams.
    let cached = s
        .tx_ssrc
        .and_then(|ssrc| api.stream_tx(&ssrc))
        .filter(|tx| tx.mid() == mid && tx.rid().is_none());
    if let Some(tx) = cached {
        if video {
            tx.set_unpaced(unpaced);
        }
        tx.write_rtp(rtp);
    } else {
        let tx = api
            .stream_tx_by_mid(mid, None)
            .ok_or(RtcError::NoSenderSource)?;
        s.tx_ssrc = Some(tx.ssrc());
        if video {
            tx.set_unpaced(unpaced);
        }
        tx.write_rtp(rtp);
    }
    Ok(())
}

impl Sfu {
    /// Starts forwarding `track` to `subscriber` on its m-line `mid`.
    pub(super) fn add_subscriber(&mut self, track: TrackId, subscriber: ConnectionId, mid: Mid) {
        // A local track, or one relayed from another core.
        let Some(p) = self.publication_mut(track) else {
            return;
        };
        // Simulcast starts on the lowest layer, for a quick first picture;
        // the allocation raises it as bandwidth and size allow.
        let target = if p.layers.is_empty() { None } else { Some(0) };
        p.subscribers
            .push(Subscriber::new(subscriber, mid, p.epoch, target));
        let video = p.kind == MediaKind::Video;
        // A remote track's origin learns what crosses the link now.
        self.update_demand(track);
        // A new subscriber can only start decoding on a keyframe.
        if video {
            self.request_keyframe(track);
        }
    }

    /// Feeds free m-lines of a WHEP viewer from the room's tracks of `kind`.
    pub(super) fn bind_viewer(&mut self, viewer: ConnectionId, kind: MediaKind) {
        let Some(room) = self.peers.get(&viewer).map(|p| p.room().clone()) else {
            return;
        };
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.connections.clone())
            .unwrap_or_default();
        // The first published track of this kind feeds the viewer.
        let candidate = members.iter().filter(|m| **m != viewer).find_map(|m| {
            self.peers.get(m).and_then(|p| {
                p.published
                    .iter()
                    .find(|t| t.kind == kind)
                    .map(|t| (p.public_id(), t.id))
            })
        });
        // Else one relayed from another core of the room.
        let candidate = candidate.or_else(|| {
            self.remote_tracks(&room)
                .into_iter()
                .find(|(_, _, k)| *k == kind)
                .map(|(t, p, _)| (p, t))
        });
        let Some((public, track)) = candidate else {
            return;
        };
        let Some(v) = self.peers.get_mut(&viewer) else {
            return;
        };
        let Some(slot) = v.free_slot(kind) else {
            return;
        };
        slot.source = Some(track);
        slot.publisher = Some(public);
        let Some(mid) = slot.mid() else {
            return;
        };
        self.add_subscriber(track, viewer, mid);
    }

    /// Track `src` stops being written to `subscriber`'s m-line `mid`.
    pub(super) fn stop_feeding(&mut self, src: TrackId, subscriber: ConnectionId, mid: Mid) {
        if let Some(p) = self.publication_mut(src) {
            p.subscribers
                .retain(|x| !(x.connection == subscriber && x.mid == mid));
        }
        self.update_demand(src);
    }

    pub(super) fn request_keyframe(&mut self, track: TrackId) {
        let Some(publisher) = self.tracks.get(&track).copied() else {
            // A remote track: its origin asks its publisher.
            self.request_remote_keyframe(track, 0);
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
        if !p.keyframes.request(now, interval) {
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let mid = p.mid;
        let rids = keyframe_rids(p);
        let stats = &mut self.stats;
        // Driven below either way: a poisoned peer is removed by its drive.
        let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
            for rid in rids {
                if ask_keyframe(rtc, mid, rid) {
                    stats.keyframe_requests += 1;
                } else {
                    tracing::debug!(track = %track, ?rid, "keyframe request: no such stream yet");
                }
            }
        });
        self.mark_dirty(publisher);
    }

    /// A packet of `publisher`'s m-line `mid` (layer `rid`) arrived: it
    /// goes to the publication's subscribers (a handover's first decodable
    /// packet first takes the track over).
    pub(super) fn forward(
        &mut self,
        publisher: ConnectionId,
        mid: Mid,
        rid: Option<Rid>,
        packet: Packet,
    ) {
        if self
            .peers
            .get(&publisher)
            .is_some_and(|p| p.is_deferred(mid))
            && !self.take_over_track(publisher, mid, packet.keyframe_start)
        {
            return;
        }
        let now = self.now;
        let Some(p) = self
            .peers
            .get_mut(&publisher)
            .and_then(|p| p.publication_by_mid(mid))
        else {
            return;
        };
        // A muted track is not forwarded, whether or not its publisher
        // still sends (the server API's mute does not rely on the client).
        if p.muted {
            return;
        }
        let layer = p.layer_of(rid);
        // A hole in the stream that NACKs did not fill in time: the
        // pictures after it cannot be decoded until the next keyframe.
        let lost = if p.kind == MediaKind::Video {
            match layer {
                Some(l) => p.layers[l].gaps.observe(*packet.seq, now),
                None => p.gaps.observe(*packet.seq, now),
            }
        } else {
            false
        };
        if let Some(l) = layer {
            p.layers[l].measure(now, packet.payload.len());
        }
        let track = p.id;
        let epoch = p.epoch;
        if lost {
            self.request_keyframe(track);
        }
        let layer = layer.map(|l| l as u8);
        // To the other cores whose subscribers want this layer, once each.
        self.relay_packet(track, layer, epoch, &packet);
        self.fan_out(track, layer, &packet);
    }

    /// Writes one packet of publication `track` (its simulcast layer
    /// `layer`, `None` for a single-layer track) to the publication's local
    /// subscribers, each with its own numbering (sequence, timestamp, VP8
    /// picture id), switching a subscriber to the layer it waits for at
    /// that layer's keyframe start, and asking the publisher for a keyframe
    /// of a layer someone waits for.
    pub(crate) fn fan_out(&mut self, track: TrackId, layer: Option<u8>, packet: &Packet) {
        let Some(publisher) = self.tracks.get(&track).copied() else {
            return;
        };
        let Some(p) = self
            .peers
            .get_mut(&publisher)
            .and_then(|p| p.publication(track))
        else {
            return;
        };
        let epoch = p.epoch;
        // Taken out so subscribers' choices can be updated while writing to
        // other peers; put back below. No allocation: the Vec moves.
        let mut subscribers = std::mem::take(&mut p.subscribers);
        let want_keyframe = self.write_to_subscribers(&mut subscribers, epoch, layer, packet);
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let interval = self.config.keyframe_interval;
        let Some(p) = peer.published.iter_mut().find(|p| p.id == track) else {
            return;
        };
        p.subscribers = subscribers;
        if want_keyframe != 0 {
            let mid = p.mid;
            let mut asked = false;
            for (i, l) in p.layers.iter_mut().enumerate() {
                if want_keyframe & (1 << i.min(31)) != 0 && l.keyframes.request(now, interval) {
                    let stats = &mut self.stats;
                    // Driven below either way: poisoned, its drive removes it.
                    let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
                        if ask_keyframe(rtc, mid, Some(l.rid)) {
                            stats.keyframe_requests += 1;
                        }
                    });
                    asked = true;
                }
            }
            if asked && peer.enqueue() {
                self.written.push(publisher);
            }
        }
    }

    /// Writes `packet` (of layer `layer`, publication epoch `epoch`) to
    /// `subscribers`; returns the layers some subscriber waits to switch to
    /// at a keyframe (bit per layer).
    pub(crate) fn write_to_subscribers(
        &mut self,
        subscribers: &mut [Subscriber],
        epoch: u32,
        layer: Option<u8>,
        packet: &Packet,
    ) -> u32 {
        let audio = !packet.is_video();
        let mut want_keyframe: u32 = 0;
        for s in subscribers {
            if s.paused {
                continue;
            }
            if let Some(l) = layer {
                if s.target != s.current {
                    // Switch only where the new layer's picture can start.
                    if s.target == Some(l) && packet.keyframe_start {
                        s.current = s.target;
                        s.rebase();
                    } else if let Some(t) = s.target {
                        want_keyframe |= 1 << t.min(31);
                    }
                }
                if s.current != Some(l) {
                    continue;
                }
            }
            let Some(sub) = self.peers.get_mut(&s.connection) else {
                continue;
            };
            let estimate = sub.estimate();
            let now = self.now;
            let Peer {
                rtc,
                subscriptions,
                pace,
                ..
            } = &mut **sub;
            let Some(line) = subscriptions.iter_mut().find(|x| x.mid() == Some(s.mid)) else {
                continue;
            };
            // A panic in the subscriber's `Rtc` is the subscriber's: it is
            // closed, the publisher and the other subscribers go on.
            let written = rtc.call(RtcCall::Forward, |rtc| {
                // The subscriber may have negotiated other payload types, or not
                // this codec. An m-line's payload types stay fixed once
                // negotiated, so the match is kept per source payload type.
                let pt = match s.pt_map {
                    Some((e, from, to)) if e == epoch && from == packet.pt => to,
                    _ => {
                        let to = rtc.codec_config().match_params(packet.params)?.pt();
                        s.pt_map = Some((epoch, packet.pt, to));
                        to
                    }
                };
                let m = s.map(epoch, packet, &mut line.next_seq)?;
                Some(write_packet(rtc, s, pt, m, packet, (pace, now, estimate)))
            });
            let written = match written {
                Ok(Some(w)) => w,
                Ok(None) => continue,
                Err(Poisoned) => {
                    // Its drive removes it, right after this fan-out.
                    if sub.enqueue() {
                        self.written.push(s.connection);
                    }
                    continue;
                }
            };
            match written {
                Ok(()) => {
                    // Driven right after this fan-out even when input for it
                    // waits further back in the queue: str0m's pacer would
                    // release two packets written before one drive in its
                    // own order, not theirs.
                    if sub.on_written(audio) {
                        // Queued here whether or not it waits in the other queue.
                        sub.enqueue();
                        self.written.push(s.connection);
                    }
                    if audio || packet.marker {
                        self.stats.media_forwarded += 1;
                    }
                    self.stats.packets_forwarded += 1;
                    self.stats.bytes_forwarded += packet.payload.len() as u64;
                }
                Err(e) => {
                    tracing::debug!(participant = %s.connection, error = %e, "write failed");
                }
            }
        }
        want_keyframe
    }
}
