//! The SFU core fed datagrams from connected peers (`Sfu::handle_receive`):
//! a publisher (audio and three-layer simulcast video) and a subscriber,
//! both str0m clients through ICE and DTLS on a virtual clock, media
//! flowing, as the core's tests set them up. Then the input's operations:
//!
//! - raw datagrams from the publisher's, the subscriber's or a stranger's
//!   address (the router, str0m's demultiplexing: STUN, DTLS records after
//!   the handshake, SRTP and SRTCP whose authentication fails);
//! - shaped datagrams: a STUN request naming the server's ICE ufrag from a
//!   new address, RTP and RTCP headers with the session's real SSRCs, DTLS
//!   record headers, each with a fuzzed rest;
//! - media the publisher's client sends through its SRTP context (str0m's
//!   RTP API), with fuzzed payload type, sequence number, timestamp, marker,
//!   audio level and payload: the depacketizers, forwarding, simulcast
//!   layers, keyframe detection;
//! - RTCP the subscriber's client sends: PLI and FIR for what it receives,
//!   a PLI naming any SSRC, REMB, application feedback with a fuzzed payload;
//! - loss on the way to the subscriber (NACKs, retransmissions), a new
//!   client address (ICE checks, the router learning it), time passing
//!   (timeouts, the silence sweep), and the subscriber's track settings.
//!
//! A fresh, connected core per input: deterministic (a crash replays from
//! its input alone), at the cost of a setup (two handshakes) per input,
//! which an input's many operations share.
//!
//! Properties: a client is removed only with a `left` signal; at shutdown
//! every participant is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Candidate;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Ssrc};
use vela_media_core::{
    ConnectionId, JoinRequest, PeerKind, RoomId, Sfu, Signal, TrackId, TrackSettings,
};

use crate::net::{self, Client, Net, RIDS, addr};
use crate::world;

/// Operations per input, at most.
const MAX_OPS: usize = 128;

/// Reads an input front to back; past its end every read is `None`.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    /// Up to `max` bytes, as many as a length byte says.
    fn chunk(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?) % (max + 1);
        let n = n.min(self.0.len());
        let (c, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(c)
    }
}

/// A publisher's send stream.
struct Stream {
    mid: Mid,
    rid: Option<Rid>,
    pt: Pt,
    ssrc: Ssrc,
    seq: u64,
    time: u32,
}

struct World {
    sfu: Sfu,
    now: Instant,
    net: Net,
    publisher: Client,
    subscriber: Client,
    streams: Vec<Stream>,
    /// The server's ICE ufrag for the publisher (from its answer).
    server_ufrag: String,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some(mut w) = World::connected() else {
        panic!("the fuzz world did not connect");
    };
    crate::debug!("connected: {:?}", w.sfu.stats());
    let mut input = Bytes(data);
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        crate::debug!("op {}", op % 12);
        if w.op(op, &mut input).is_none() {
            break;
        }
        w.pass(Duration::from_millis(1));
    }
    w.pass(Duration::from_millis(50));
    crate::debug!("done: {:?}", w.sfu.stats());
    world::shut_down(&mut w.sfu, w.now);
}

/// Joins `room` as `name` from 192.0.2.`host` and negotiates the
/// client's first offer; the server's ICE ufrag from the answer.
fn join(
    sfu: &mut Sfu,
    now: Instant,
    room: &RoomId,
    name: &str,
    host: u8,
    offer: net::Offer,
) -> Option<(Client, String)> {
    let mut c = Client::new(now, addr(host, 5000));
    let joined = sfu
        .handle_join(now, JoinRequest::new(room.clone(), name, PeerKind::Session))
        .ok()?;
    c.id = Some(joined.connection);
    let (offer, pending) = c.offer(offer)?;
    let answer = sfu.handle_offer(now, joined.connection, offer).ok()?;
    let answer_text = answer.to_sdp_string();
    c.rtc.sdp_api().accept_answer(pending, answer).ok()?;
    let ufrag = answer_text
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))?
        .trim()
        .to_owned();
    Some((c, ufrag))
}

impl World {
    /// Two clients in a room, connected, the subscriber receiving the
    /// publisher's media.
    fn connected() -> Option<World> {
        let now = Instant::now();
        let mut sfu = world::sfu(now);
        let room = RoomId::new("fuzz").ok()?;
        let publish = net::Offer {
            audio: true,
            video: true,
            simulcast: true,
            ..net::Offer::default()
        };
        let (publisher, server_ufrag) = join(&mut sfu, now, &room, "publisher", 2, publish)?;
        let receive = net::Offer {
            data: true,
            ..net::Offer::default()
        };
        let (subscriber, _) = join(&mut sfu, now, &room, "subscriber", 3, receive)?;
        let mut net = Net::default();
        net.lose_to = Some(subscriber.addrs[0]);
        let mut w = World {
            sfu,
            now,
            net,
            publisher,
            subscriber,
            streams: Vec::new(),
            server_ufrag,
        };
        for _ in 0..100 {
            w.pass(Duration::from_millis(10));
            if w.publisher.connected && w.subscriber.connected {
                break;
            }
        }
        if !(w.publisher.connected && w.subscriber.connected) {
            return None;
        }
        w.find_streams();
        // Keyframes on every layer, then audio, until the subscriber gets media.
        for round in 0..50u32 {
            for i in 0..w.streams.len() {
                let key = round % 10 == 0;
                let payload: Vec<u8> = if w.streams[i].rid.is_none() && w.is_audio(i) {
                    vec![0xfc, 0xff, 0xfe]
                } else {
                    // VP8 payload descriptor (start of partition 0), then a
                    // frame tag (bit 0 clear: a keyframe) and the start code.
                    vec![
                        0x10,
                        if key { 0x10 } else { 0x11 },
                        0x02,
                        0x00,
                        0x9d,
                        0x01,
                        0x2a,
                        0,
                        0,
                    ]
                };
                w.write(i, 1, 960, true, payload);
            }
            w.pass(Duration::from_millis(20));
            if w.subscriber.frames >= 4 {
                return Some(w);
            }
        }
        None
    }

    fn is_audio(&self, i: usize) -> bool {
        let mid = self.streams[i].mid;
        self.publisher
            .mids
            .iter()
            .any(|(m, k, _)| *m == mid && *k == MediaKind::Audio)
    }

    /// The publisher's send streams and their payload types.
    fn find_streams(&mut self) {
        let rtc = &mut self.publisher.rtc;
        for (mid, kind, _) in self.publisher.mids.clone() {
            let codec = if kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            let Some(pt) = rtc.writer(mid).and_then(|w| {
                w.payload_params()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
            }) else {
                continue;
            };
            let rids: Vec<Option<Rid>> = if kind == MediaKind::Video {
                RIDS.iter().map(|r| Some(Rid::from(*r))).collect()
            } else {
                vec![None]
            };
            for rid in rids {
                let mut api = rtc.direct_api();
                if let Some(s) = api.stream_tx_by_mid(mid, rid) {
                    self.streams.push(Stream {
                        mid,
                        rid,
                        pt,
                        ssrc: s.ssrc(),
                        seq: 1,
                        time: 0,
                    });
                }
            }
        }
    }

    /// The publisher's client sends one RTP packet on stream `i`.
    fn write(&mut self, i: usize, seq_step: u64, time_step: u32, marker: bool, payload: Vec<u8>) {
        self.write_with(
            i,
            seq_step,
            time_step,
            marker,
            ExtensionValues::default(),
            None,
            payload,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write_with(
        &mut self,
        i: usize,
        seq_step: u64,
        time_step: u32,
        marker: bool,
        ext: ExtensionValues,
        pt: Option<Pt>,
        payload: Vec<u8>,
    ) {
        let now = self.now;
        let Some(s) = self.streams.get_mut(i) else {
            return;
        };
        s.seq = s.seq.wrapping_add(seq_step) & 0xffff_ffff_ffff;
        s.time = s.time.wrapping_add(time_step);
        let (ssrc, seq, time, pt) = (s.ssrc, s.seq, s.time, pt.unwrap_or(s.pt));
        let mut api = self.publisher.rtc.direct_api();
        let Some(tx) = api.stream_tx(&ssrc) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(seq), time, now, Arc::<[u8]>::from(payload))
                .marker(marker)
                .ext_vals(ext)
                .nackable(true),
        );
    }

    /// One operation; `None` at the end of the input.
    fn op(&mut self, op: u8, b: &mut Bytes<'_>) -> Option<()> {
        match op % 12 {
            // Raw datagrams.
            0 => {
                let src = self.publisher.addrs[0];
                let d = b.chunk(1500)?.to_vec();
                self.net.send(src, d);
            }
            1 => {
                let src = self.subscriber.addrs[0];
                let d = b.chunk(1500)?.to_vec();
                self.net.send(src, d);
            }
            2 => {
                let src = addr(100 + b.u8()? % 4, 6000);
                let d = b.chunk(1500)?.to_vec();
                self.net.send(src, d);
            }
            // Shaped datagrams.
            3 => {
                let shape = b.u8()?;
                let d = self.shaped(shape, b)?;
                let src = match shape & 0x80 {
                    0 => self.publisher.addrs[0],
                    _ => addr(100 + (shape >> 4) % 4, 6000),
                };
                self.net.send(src, d);
            }
            // Media through the publisher's client.
            4 | 5 => {
                let i = usize::from(b.u8()?) % self.streams.len().max(1);
                let flags = b.u8()?;
                let seq_step = match flags & 3 {
                    0 => 1,
                    1 => 0,
                    2 => u64::from(b.u8()?),
                    _ => u64::from(b.u16()?) << 8,
                };
                let time_step = if flags & 4 == 0 {
                    u32::from(b.u8()?) * 90
                } else {
                    b.u32()?
                };
                let marker = flags & 8 != 0;
                let mut ext = ExtensionValues::default();
                if flags & 16 != 0 {
                    ext.audio_level = Some(-((b.u8()? % 128) as i8));
                    ext.voice_activity = Some(flags & 32 != 0);
                }
                let pt = (flags & 64 != 0)
                    .then(|| b.u8().map(|p| Pt::from(p & 0x7f)))
                    .flatten();
                let payload = b.chunk(1200)?.to_vec();
                self.write_with(i, seq_step, time_step, marker, ext, pt, payload);
            }
            // RTCP through the subscriber's client.
            6 => {
                let kind = b.u8()?;
                let received: Vec<(Mid, Ssrc)> = self.received_streams();
                let pick = usize::from(b.u8()?);
                match kind % 5 {
                    0 | 1 => {
                        if let Some((_, ssrc)) = received.get(pick % received.len().max(1)) {
                            let k = if kind % 5 == 0 {
                                KeyframeRequestKind::Pli
                            } else {
                                KeyframeRequestKind::Fir
                            };
                            let mut api = self.subscriber.rtc.direct_api();
                            if let Some(rx) = api.stream_rx(ssrc) {
                                rx.request_keyframe(k);
                            }
                        }
                    }
                    2 => {
                        let sender = Ssrc::from(b.u32()?);
                        let media = Ssrc::from(b.u32()?);
                        self.subscriber
                            .rtc
                            .direct_api()
                            .send_pli_feedback(sender, media);
                    }
                    3 => {
                        let bps = u64::from(b.u32()?);
                        let mut api = self.subscriber.rtc.direct_api();
                        if let Some((_, ssrc)) = received.get(pick % received.len().max(1))
                            && let Some(rx) = api.stream_rx(ssrc)
                        {
                            rx.request_remb(str0m::bwe::Bitrate::bps(bps));
                        }
                    }
                    _ => {
                        let media = match received.get(pick % received.len().max(1)) {
                            Some((_, s)) => *s,
                            None => Ssrc::from(b.u32()?),
                        };
                        let payload = b.chunk(256)?.to_vec();
                        self.subscriber.rtc.direct_api().send_app_specific_feedback(
                            Ssrc::from(1),
                            media,
                            payload,
                        );
                    }
                }
            }
            // Loss on the way to the subscriber.
            7 => self.net.lose = u32::from(b.u8()? % 32),
            // A new address for a client: it starts ICE checks from there.
            8 => {
                let n = b.u8()?;
                let a = addr(10 + n % 8, 7000);
                let c = if n & 0x80 == 0 {
                    &mut self.publisher
                } else {
                    &mut self.subscriber
                };
                if !c.addrs.contains(&a)
                    && let Ok(cand) = Candidate::host(a, "udp")
                {
                    c.rtc.add_local_candidate(cand);
                    c.addrs.push(a);
                }
            }
            // Time passes: up to a second, or up to 20 s (past the
            // reconnect timeout, with the clients' timers skipped past the
            // first steps: an outage).
            9 => {
                let ms = u64::from(b.u8()?) * 4;
                self.pass(Duration::from_millis(ms));
            }
            10 => {
                let ms = u64::from(b.u16()?) % 20_000;
                self.pass(Duration::from_millis(ms));
            }
            // The subscriber's wishes for a track (simulcast layers).
            _ => {
                let track = TrackId(u64::from(b.u8()? % 4));
                let flags = b.u8()?;
                let settings = TrackSettings {
                    enabled: flags & 1 != 0,
                    width: (flags & 2 != 0).then(|| u32::from(b.u16().unwrap_or(0))),
                    height: (flags & 4 != 0).then(|| u32::from(b.u16().unwrap_or(0))),
                };
                if let Some(sub) = self.subscriber.id {
                    let _ = self
                        .sfu
                        .handle_track_settings(self.now, sub, track, settings);
                }
            }
        }
        Some(())
    }

    /// The SSRCs the subscriber receives on.
    fn received_streams(&mut self) -> Vec<(Mid, Ssrc)> {
        let mut out = Vec::new();
        for (mid, _, _) in self.subscriber.mids.clone() {
            let mut api = self.subscriber.rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                out.push((mid, rx.ssrc()));
            }
        }
        out
    }

    /// A datagram with a valid-looking start and the input's rest.
    fn shaped(&mut self, shape: u8, b: &mut Bytes<'_>) -> Option<Vec<u8>> {
        let rest = b.chunk(1200)?;
        let mut d = Vec::with_capacity(64 + rest.len());
        match shape % 4 {
            // A STUN binding request naming the server's ufrag (without
            // valid integrity, unless the input supplies one).
            0 => {
                let client = self
                    .publisher
                    .rtc
                    .direct_api()
                    .local_ice_credentials()
                    .ufrag;
                let username = format!("{}:{}", self.server_ufrag, client);
                let mut attrs = Vec::new();
                attrs.extend_from_slice(&0x0006u16.to_be_bytes());
                attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
                attrs.extend_from_slice(username.as_bytes());
                while attrs.len() % 4 != 0 {
                    attrs.push(0);
                }
                attrs.extend_from_slice(rest);
                d.extend_from_slice(&0x0001u16.to_be_bytes());
                d.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
                d.extend_from_slice(&0x2112_a442u32.to_be_bytes());
                d.extend_from_slice(&[7; 12]);
                d.extend_from_slice(&attrs);
            }
            // A DTLS record header (content type 20..=25, DTLS 1.2).
            1 => {
                d.push(20 + shape / 4 % 6);
                d.extend_from_slice(&[0xfe, 0xfd]);
                d.extend_from_slice(rest);
            }
            // An RTP header with one of the publisher's SSRCs.
            2 => {
                let s = self
                    .streams
                    .get(usize::from(shape / 4) % self.streams.len().max(1))?;
                d.extend_from_slice(&[0x80 | (shape & 0x10), *s.pt]);
                d.extend_from_slice(&(s.seq as u16).wrapping_add(1).to_be_bytes());
                d.extend_from_slice(&s.time.to_be_bytes());
                d.extend_from_slice(&(*s.ssrc).to_be_bytes());
                d.extend_from_slice(rest);
            }
            // An RTCP header (SR, RR, SDES, BYE, APP, RTPFB, PSFB, XR)
            // with one of the publisher's SSRCs.
            _ => {
                let s = self
                    .streams
                    .get(usize::from(shape / 4) % self.streams.len().max(1))?;
                let pt = [200u8, 201, 202, 203, 204, 205, 206, 207][usize::from(shape >> 5)];
                d.extend_from_slice(&[0x81, pt]);
                d.extend_from_slice(&(((rest.len() + 4) / 4) as u16).to_be_bytes());
                d.extend_from_slice(&(*s.ssrc).to_be_bytes());
                d.extend_from_slice(rest);
            }
        }
        Some(d)
    }

    /// Time passes in steps, packets moving between the clients and the core.
    fn pass(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..200 {
            self.pump();
            if self.now >= end {
                return;
            }
            let next = self.net.core_timeout.unwrap_or(end);
            let next = [self.publisher.timeout, self.subscriber.timeout]
                .into_iter()
                .fold(next, Instant::min)
                .clamp((self.now + Duration::from_millis(1)).min(end), end);
            self.now = next;
            self.sfu.handle_timeout(self.now);
            net::client_timeouts(self.now, &mut [&mut self.publisher, &mut self.subscriber]);
        }
        // Past 200 steps, the rest of the time at once.
        self.now = end;
        self.sfu.handle_timeout(self.now);
        self.pump();
    }

    /// Moves datagrams until nothing moves; the clients answer the
    /// server's offers at once.
    fn pump(&mut self) {
        for _ in 0..10 {
            let signals = self.net.pump(
                &mut self.sfu,
                self.now,
                &mut [&mut self.publisher, &mut self.subscriber],
            );
            if signals.is_empty() {
                break;
            }
            for (p, s) in signals {
                self.signal(p, s);
            }
        }
        for c in [&self.publisher, &self.subscriber] {
            if let Some(id) = c.id {
                assert!(
                    c.left || self.sfu.room_of(id).is_some(),
                    "{id} left the core without being told"
                );
            }
        }
    }

    fn signal(&mut self, p: ConnectionId, s: Signal) {
        let c = if Some(p) == self.publisher.id {
            &mut self.publisher
        } else if Some(p) == self.subscriber.id {
            &mut self.subscriber
        } else {
            return;
        };
        if let Signal::Offer(offer) = s
            && c.rtc.is_alive()
            && let Ok(answer) = c.rtc.sdp_api().accept_offer(offer)
        {
            let _ = self.sfu.handle_answer(self.now, p, answer);
        }
    }
}
