//! Receiving: datagrams read from the participants' sockets (a bounded
//! number per turn), str0m's events, and each RTP packet's trailer turned
//! into latency, route and hole counts.

use std::io;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input};
use webrtc_util::marshal::Unmarshal;

use super::send::start_media;
use super::{
    Client, Core, EngineConfig, Link, RAW_PT_VP8, RxStream, Stats, micros, simulated_loss,
};
use crate::media::{TailAssembler, Trailer};
use crate::relay;

impl Core {
    /// Reads up to `budget` datagrams from a participant's socket; true when
    /// it may hold more (the socket is edge-triggered: it must be revisited).
    pub(super) fn readable(&mut self, slot: usize, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let (n, src) = match c.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => continue, // ICMP errors and the like
            };
            let now = Instant::now();
            self.stats.counters.datagrams_in += 1;
            let data = &self.buf[..n];
            if simulated_loss(&self.cfg, &mut self.rng, c.connected, data) {
                self.stats.counters.dropped_in += 1;
                continue;
            }
            match &mut c.link {
                Link::Rtc(rtc) => {
                    let Ok(r) = Receive::new(Protocol::Udp, src, c.local, data) else {
                        continue;
                    };
                    if rtc.handle_input(Input::Receive(now, r)).is_err() {
                        self.stats.counters.rtc_errors += 1;
                        c.dead = true;
                    }
                    self.drive(slot, now);
                }
                Link::Raw { .. } => {
                    if data.starts_with(relay::JOIN_OK) {
                        if !c.connected {
                            c.connected = true;
                            c.connected_at = Some(now);
                            start_media(c, now, &mut self.rng, &self.cfg);
                            self.reschedule(slot);
                        }
                        continue;
                    }
                    let Ok(p) = rtp::packet::Packet::unmarshal(&mut &data[..]) else {
                        continue;
                    };
                    let video = p.header.payload_type == RAW_PT_VP8;
                    let seq = p.header.sequence_number;
                    let st = c.rx.entry(p.header.ssrc).or_insert_with(|| RxStream {
                        video,
                        asm: TailAssembler::default(),
                        first: u64::from(seq),
                        max: u64::from(seq),
                        received: 0,
                    });
                    let ext = extend_seq(st.max, seq);
                    on_rtp(
                        c,
                        &mut self.stats,
                        self.cfg.epoch,
                        p.header.ssrc,
                        ext,
                        p.header.marker,
                        &p.payload,
                        now,
                    );
                }
            }
        }
        true
    }
}

pub(super) fn holes(c: &Client) -> u64 {
    c.rx.values()
        .map(|s| (s.max + 1 - s.first).saturating_sub(s.received))
        .sum()
}

/// Extends a 16-bit sequence number against the highest extended one seen.
fn extend_seq(max: u64, seq: u16) -> u64 {
    let roc = max >> 16;
    let cands = [roc.wrapping_sub(1), roc, roc + 1].map(|r| (r << 16) | u64::from(seq));
    cands
        .into_iter()
        .filter(|c| *c < (1 << 62))
        .min_by_key(|c| c.abs_diff(max))
        .unwrap_or(u64::from(seq))
}

#[allow(clippy::too_many_arguments)]
fn on_rtp(
    c: &mut Client,
    stats: &mut Stats,
    epoch: Instant,
    ssrc: u32,
    seq: u64,
    marker: bool,
    payload: &[u8],
    at: Instant,
) {
    stats.interval.rtp_packets += 1;
    stats.interval.rtp_bytes += payload.len() as u64;
    if stats.recording {
        stats.window.rtp_packets += 1;
        stats.window.rtp_bytes += payload.len() as u64;
    }
    let Some(st) = c.rx.get_mut(&ssrc) else {
        return;
    };
    if seq < st.first {
        st.first = seq;
    }
    st.max = st.max.max(seq);
    st.received += 1;
    let trailer = if st.video {
        st.asm.push(seq, payload, marker)
    } else {
        Trailer::parse(payload)
    };
    let Some(t) = trailer else {
        return;
    };
    let recv_us = micros(at, epoch);
    let latency = recv_us.saturating_sub(t.sent_us);
    let served = |id: u32| stats.served_by.get(id as usize).copied().flatten();
    let entry = |id: u32| stats.nodes.get(id as usize).copied();
    let relayed = match (served(c.id), served(t.sender / 2)) {
        (Some(a), Some(b)) => a != b,
        _ => entry(c.id) != entry(t.sender / 2),
    };
    stats.interval.frame(t.video, t.layer, latency, relayed);
    if stats.recording {
        stats.window.frame(t.video, t.layer, latency, relayed);
    }
    stats
        .routes
        .entry((c.id, t.sender))
        .or_default()
        .record(&t, recv_us);
    if c.first_media_at.is_none() {
        c.first_media_at = Some(at);
    }
}

pub(super) fn on_event(
    c: &mut Client,
    stats: &mut Stats,
    cfg: &EngineConfig,
    rng: &mut fastrand::Rng,
    e: Event,
    now: Instant,
) {
    let Link::Rtc(rtc) = &mut c.link else {
        return;
    };
    match e {
        Event::Connected => {
            c.connected = true;
            c.connected_at = Some(now);
            let pt = |codec| {
                rtc.codec_config()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
            };
            c.pts = pt(Codec::Opus).zip(pt(Codec::Vp8));
            start_media(c, now, rng, cfg);
        }
        Event::RtpPacket(p) => {
            let ssrc = *p.header.ssrc;
            if let std::collections::hash_map::Entry::Vacant(e) = c.rx.entry(ssrc) {
                let mid = rtc.direct_api().stream_rx(&p.header.ssrc).map(|s| s.mid());
                let video = mid
                    .and_then(|m| rtc.media(m))
                    .map(|m| m.kind() == MediaKind::Video)
                    .unwrap_or(false);
                e.insert(RxStream {
                    video,
                    asm: TailAssembler::default(),
                    first: *p.seq_no,
                    max: *p.seq_no,
                    received: 0,
                });
            }
            on_rtp(
                c,
                stats,
                cfg.epoch,
                ssrc,
                *p.seq_no,
                p.header.marker,
                &p.payload,
                p.timestamp,
            );
        }
        Event::KeyframeRequest(r) => {
            if let Some(v) = c.video.as_mut()
                && v.mid == r.mid
            {
                let layer = r
                    .rid
                    .and_then(|rid| v.layers.iter().position(|l| l.rid == Some(rid)));
                v.source.request_keyframe(layer);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_extension() {
        assert_eq!(extend_seq(10, 11), 11);
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_536 + 3, 65_534), 65_534);
        assert_eq!(extend_seq(0, 65_535), 65_535);
    }
}
