//! Receiving: datagrams read from the participants' sockets, or frames
//! from their TCP streams (a bounded number per turn), str0m's events, and each RTP packet's trailer turned
//! into latency, route and hole counts.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input};
use webrtc_util::marshal::Unmarshal;

use super::send::start_media;
use super::{
    Client, Core, EngineConfig, Link, RAW_PT_VP8, RxStream, Sock, Stats, micros, simulated_loss,
};
use crate::media::{TailAssembler, Trailer};
use crate::relay;

impl Core {
    /// Reads up to `budget` packets from a participant's socket; true when
    /// it may hold more (the socket is edge-triggered: it must be revisited).
    pub(super) fn readable(&mut self, slot: usize, budget: usize) -> bool {
        match self.clients.get(slot).and_then(Option::as_ref) {
            Some(c) if matches!(c.socket, Sock::Tcp(_)) => self.readable_tcp(slot, budget),
            Some(_) => self.readable_udp(slot, budget),
            None => false,
        }
    }

    fn readable_udp(&mut self, slot: usize, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let Sock::Udp(socket) = &c.socket else {
                return false;
            };
            let (n, src) = match socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => continue, // ICMP errors and the like
            };
            self.packet(slot, n, src, Protocol::Udp);
        }
        true
    }

    /// A TCP participant: first what it queued to send (a writable event
    /// lands here too), then whole frames, reading the stream when none is
    /// buffered. A frame counts as a datagram against the budget.
    fn readable_tcp(&mut self, slot: usize, budget: usize) -> bool {
        if !self.flush_tcp(slot) {
            return false;
        }
        let mut frames = 0;
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let Sock::Tcp(conn) = &mut c.socket else {
                return false;
            };
            if c.dead {
                return false;
            }
            if let Some(f) = conn.rx.next_frame() {
                // Into the engine's buffer, so the frame is handled as a
                // datagram is (the copy is small next to str0m's work).
                let n = f.len();
                if self.buf.len() < n {
                    self.buf.resize(n, 0);
                }
                self.buf[..n].copy_from_slice(f);
                let src = conn.peer;
                self.packet(slot, n, src, Protocol::Tcp);
                frames += 1;
                if frames >= budget {
                    return true;
                }
                continue;
            }
            match conn.rx.read_from(&mut conn.stream) {
                Ok(0) => {
                    self.tcp_closed(slot, "closed by the server");
                    return false;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.tcp_closed(slot, &e.to_string());
                    return false;
                }
            }
        }
    }

    /// One packet (the first `n` bytes of the engine's buffer) that arrived
    /// from `src` over `proto`.
    fn packet(&mut self, slot: usize, n: usize, src: SocketAddr, proto: Protocol) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let now = Instant::now();
        self.stats.counters.datagrams_in += 1;
        let data = &self.buf[..n];
        if simulated_loss(&self.cfg, &mut self.rng, c.connected, data) {
            self.stats.counters.dropped_in += 1;
            return;
        }
        match &mut c.link {
            Link::Rtc(rtc) => {
                let Ok(r) = Receive::new(proto, src, c.local, data) else {
                    return;
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
                    return;
                }
                let Ok(p) = rtp::packet::Packet::unmarshal(&mut &data[..]) else {
                    return;
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
