//! Forwarding media: subscribers of a track, keyframe requests, and the
//! per-packet fan-out.

use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Rtc, RtcError};

use super::Sfu;
use super::drive::packets_of;
use crate::id::{ConnectionId, TrackId};
use crate::isolation::{Poisoned, RtcCall};
use crate::peer::Peer;
use crate::track::{Publication, Subscriber, Subscription};

/// The layers (rids) to ask a keyframe of: for a simulcast track the layers
/// its subscribers receive or switch to, every layer if none is in use yet
/// (str0m needs the rid: a request without one reaches no simulcast layer);
/// `[None]` for a single-layer track.
pub(super) fn keyframe_rids(p: &Publication) -> Vec<Option<str0m::media::Rid>> {
    if p.layers.is_empty() {
        return vec![None];
    }
    let used: Vec<Option<str0m::media::Rid>> = p
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

/// Writes one audio frame to a subscriber's m-line (its `rtc` and
/// `subscriptions`) as one RTP packet with the m-line's own sequence
/// numbers, carrying the publisher's audio level.
fn write_audio(
    rtc: &mut Rtc,
    subscriptions: &mut [Subscription],
    s: &mut Subscriber,
    pt: Pt,
    time: MediaTime,
    data: &MediaData,
) -> Result<(), RtcError> {
    let mid = s.mid;
    let seq = subscriptions
        .iter_mut()
        .find(|s| s.mid() == Some(mid))
        .ok_or(RtcError::NoSenderSource)?
        .take_seq();
    let ext = ExtensionValues {
        audio_level: data.ext_vals.audio_level,
        voice_activity: data.ext_vals.voice_activity,
        ..Default::default()
    };
    let rtp = RtpWrite::new(
        pt,
        seq,
        time.numer() as u32,
        data.network_time,
        data.data.clone(),
    )
    .marker(data.audio_start_of_talk_spurt)
    .ext_vals(ext);
    let mut api = rtc.direct_api();
    // By SSRC, one hash lookup, while the cached stream still serves the
    // m-line; str0m finds one by m-line only by walking all send streams.
    let cached = s
        .tx_ssrc
        .and_then(|ssrc| api.stream_tx(&ssrc))
        .filter(|tx| tx.mid() == mid && tx.rid().is_none());
    if let Some(tx) = cached {
        tx.write_rtp(rtp);
    } else {
        let tx = api
            .stream_tx_by_mid(mid, None)
            .ok_or(RtcError::NoSenderSource)?;
        s.tx_ssrc = Some(tx.ssrc());
        tx.write_rtp(rtp);
    }
    Ok(())
}

impl Sfu {
    /// Starts forwarding `track` to `subscriber` on its m-line `mid`.
    pub(super) fn add_subscriber(&mut self, track: TrackId, subscriber: ConnectionId, mid: Mid) {
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
        // Simulcast starts on the lowest layer, for a quick first picture;
        // the allocation raises it as bandwidth and size allow.
        let target = if p.layers.is_empty() { None } else { Some(0) };
        p.subscribers
            .push(Subscriber::new(subscriber, mid, p.epoch, target));
        // A new subscriber can only start decoding on a keyframe.
        if p.kind == MediaKind::Video {
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
        if let Some(publisher) = self.tracks.get(&src).copied()
            && let Some(p) = self
                .peers
                .get_mut(&publisher)
                .and_then(|p| p.publication(src))
        {
            p.subscribers
                .retain(|x| !(x.connection == subscriber && x.mid == mid));
        }
    }

    pub(super) fn request_keyframe(&mut self, track: TrackId) {
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
        if !p.keyframes.request(now, interval) {
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let mid = p.mid;
        let rids = keyframe_rids(p);
        let stats = &mut self.stats;
        // Driven below either way: a poisoned peer is removed by its drive.
        let _ = peer.rtc.call(RtcCall::Keyframe, |rtc| {
            if let Some(mut w) = rtc.writer(mid) {
                for rid in rids {
                    match w.request_keyframe(rid, KeyframeRequestKind::Pli) {
                        Ok(()) => stats.keyframe_requests += 1,
                        Err(e) => {
                            tracing::debug!(track = %track, error = %e, "keyframe request failed")
                        }
                    }
                }
            }
        });
        self.mark_dirty(publisher);
    }

    /// Writes one media frame of `publisher` to all its subscribers.
    pub(super) fn forward(&mut self, publisher: ConnectionId, data: MediaData) {
        if self
            .peers
            .get(&publisher)
            .is_some_and(|p| p.is_deferred(data.mid))
            && !self.take_over_track(publisher, &data)
        {
            return;
        }
        let now = self.now;
        let Some(p) = self
            .peers
            .get_mut(&publisher)
            .and_then(|p| p.publication_by_mid(data.mid))
        else {
            return;
        };
        // A muted track is not forwarded, whether or not its publisher
        // still sends (the server API's mute does not rely on the client).
        if p.muted {
            return;
        }
        let layer = p.layer_of(data.rid);
        if let Some(l) = layer {
            p.layers[l].measure(now, data.data.len());
        }
        let epoch = p.epoch;
        let direct = p.kind == MediaKind::Audio;
        let keyframe = data.is_keyframe();
        // Taken out so subscribers' choices can be updated while writing to
        // other peers; put back below. No allocation: the Vec moves.
        let mut subscribers = std::mem::take(&mut p.subscribers);
        let packets = packets_of(&data);
        // Layers some subscriber waits to switch to (bit per layer).
        let mut want_keyframe: u32 = 0;
        for s in &mut subscribers {
            if s.paused {
                continue;
            }
            if let Some(l) = layer {
                let l = l as u8;
                if s.target != s.current {
                    // Switch only where the new layer's picture can start.
                    if s.target == Some(l) && keyframe {
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
            let Peer {
                rtc, subscriptions, ..
            } = &mut **sub;
            // A panic in the subscriber's `Rtc` is the subscriber's: it is
            // closed, the publisher and the other subscribers go on.
            let written = rtc.call(RtcCall::Forward, |rtc| {
                // The subscriber may have negotiated other payload types, or not
                // this codec. An m-line's payload types stay fixed once
                // negotiated, so the match is kept per source payload type.
                let pt = match s.pt_map {
                    Some((e, from, to)) if e == epoch && from == data.pt => to,
                    _ => {
                        let to = rtc
                            .writer(s.mid)
                            .and_then(|w| w.match_params(data.params))?;
                        s.pt_map = Some((epoch, data.pt, to));
                        to
                    }
                };
                let time = s.map_time(epoch, data.time, data.network_time);
                Some(if direct {
                    // An audio frame is one RTP packet: written straight to the
                    // send stream, it skips str0m's payloader and its copy.
                    write_audio(rtc, subscriptions, s, pt, time, &data)
                } else {
                    rtc.writer(s.mid)?
                        .write(pt, data.network_time, time, data.data.clone())
                })
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
                    if sub.on_written(direct) {
                        // Queued here whether or not it waits in the other queue.
                        sub.enqueue();
                        self.written.push(s.connection);
                    }
                    self.stats.media_forwarded += 1;
                    self.stats.packets_forwarded += packets;
                    self.stats.bytes_forwarded += data.data.len() as u64;
                }
                Err(e) => {
                    tracing::debug!(participant = %s.connection, error = %e, "write failed");
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let interval = self.config.keyframe_interval;
        let Some(p) = peer.published.iter_mut().find(|p| p.mid == data.mid) else {
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
                        if let Some(mut w) = rtc.writer(mid) {
                            let _ = w.request_keyframe(Some(l.rid), KeyframeRequestKind::Pli);
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
}
